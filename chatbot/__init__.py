"""chatbot: a customer-service chatbot engine serving fine-tuned GPT-2 models with ONNX Runtime.

The public API, all a channel may touch::

    from chatbot import Engine
    engine = Engine.from_folder("models/current", store="conversations.db")
    conversation = engine.start()
    reply = engine.reply(conversation.id, "Where is my order?")
    print(reply.text, reply.confidence, reply.handover)
"""

from __future__ import annotations

from chatbot.channels import Channel, ChannelInfo, available_channels, find_channel
from chatbot.engine import Engine, EngineConfig, ReplyStream
from chatbot.errors import (
    Busy,
    ChannelError,
    ChatbotError,
    ExportError,
    HandoverError,
    InvalidMessage,
    MessageTooLong,
    ModelFolderError,
    RateLimited,
    StoreError,
    UnknownConversation,
    UnknownMessage,
    WithAPerson,
    customer_message,
)
from chatbot.folder import ModelFolder
from chatbot.generation import Generator, OnnxGenerator, Token
from chatbot.logs import configure as configure_logging
from chatbot.logs import event as log_event
from chatbot.store import SQLStore, Store, open_store
from chatbot.types import (
    Conversation,
    Correction,
    Feedback,
    GenerationConfig,
    Handover,
    Message,
    Reply,
    Review,
    Role,
)

__all__ = [
    "Busy",
    "Channel",
    "ChannelError",
    "ChannelInfo",
    "ChatbotError",
    "Conversation",
    "Correction",
    "Engine",
    "EngineConfig",
    "ExportError",
    "Feedback",
    "GenerationConfig",
    "Generator",
    "Handover",
    "HandoverError",
    "InvalidMessage",
    "Message",
    "MessageTooLong",
    "ModelFolder",
    "ModelFolderError",
    "OnnxGenerator",
    "RateLimited",
    "Reply",
    "ReplyStream",
    "Review",
    "Role",
    "SQLStore",
    "Store",
    "StoreError",
    "Token",
    "UnknownConversation",
    "UnknownMessage",
    "WithAPerson",
    "available_channels",
    "configure_logging",
    "customer_message",
    "find_channel",
    "log_event",
    "open_store",
]
