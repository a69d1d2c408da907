"""2. Conversations to training examples: rendered with the chat template, tokenized, the loss
masked to the agent's turns, split into training and validation by conversation (``examples``)."""
