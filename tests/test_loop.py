"""The whole loop of people in the loop, for real: a model serves; a staff member answers a
flagged conversation and corrects a disliked reply in the staff console; the feedback export is
trained on from the current version; the new version gives the correction as its greedy reply."""

from __future__ import annotations

import json
from pathlib import Path

from starlette.testclient import TestClient

from chatbot import Engine, EngineConfig, GenerationConfig, SQLStore
from chatbot.feedback import export_feedback_file
from chatbot.versions import ModelVersions
from plugins.web.staff import StaffConsole
from plugins.web.staff_access import StaffAccounts
from training.demo.corpus import write_sample
from training.fitting.train import TrainOptions, train

ADA = ("ada", "ada-password-1")
PARCEL = "Where is my parcel 4417?"
PERSON = "Your parcel 4417 left our warehouse this morning."
PASSWORD = "How do I reset my password?"
CORRECTION = "Open Settings, choose Reset password and follow the email we send you."


def test_a_correction_made_in_the_console_is_the_next_versions_greedy_reply(tmp_path: Path) -> None:
    models = tmp_path / "models"
    sample = write_sample(tmp_path / "sample.jsonl", n=40, seed=3)
    quiet = {"eval_replies": 0, "progress_bar": False, "batch_size": 8}
    train(
        TrainOptions(data=(str(sample),), out=models, from_scratch="tiny", epochs=1, **quiet), progress=print
    )
    first = ModelVersions(root=models).current()
    assert first is not None and first.version == "v1"

    store = tmp_path / "conversations.db"
    unsure = EngineConfig(
        generation=GenerationConfig(max_new_tokens=24), handover_below=0.0
    )  # flags every reply
    with Engine.from_folder(models / "current", store=store, config=unsure) as engine:
        parcel = engine.start("parcel", metadata={"channel": "web"})
        assert engine.reply(parcel.id, PARCEL).handover  # flagged: it waits for a person
        password = engine.start("password", metadata={"channel": "web"})
        disliked = engine.reply(password.id, PASSWORD)
        engine.feedback(disliked.message_id, "down")

        console = TestClient(StaffConsole(engine, StaffAccounts.parse(f"{ADA[0]}:{ADA[1]}")).app())
        as_ada = {"auth": ADA, "headers": {"Accept": "application/json"}}
        assert console.post("/staff/conversations/parcel/take", **as_ada).status_code == 200
        answered = console.post("/staff/conversations/parcel/reply", data={"text": PERSON}, **as_ada)
        assert answered.status_code == 200, answered.text
        assert (
            console.post("/staff/conversations/parcel/hand-back", data={"close": "1"}, **as_ada).status_code
            == 200
        )
        review = console.get("/staff/api/review", **as_ada).json()["review"]
        item = next(i for i in review if i["why"] == "disliked")
        assert item["reply"]["id"] == disliked.message_id and item["model"] == "models/v1"
        corrected = console.post(
            f"/staff/replies/{disliked.message_id}/correction", data={"text": CORRECTION}, **as_ada
        )
        assert corrected.status_code == 200, corrected.text

    export = tmp_path / "feedback.jsonl"
    with SQLStore.sqlite(store) as reopened:
        report = export_feedback_file(reopened, export)
    assert (report.corrections, report.by_people) == (1, 1), report.summary()
    records = {r["id"]: r["messages"] for r in map(json.loads, export.read_text().splitlines())}
    assert [(m["role"], m["content"]) for m in records["password"] if m["role"] != "system"] == [
        ("user", PASSWORD),
        ("assistant", CORRECTION),
    ]
    # the bot's flagged reply is dropped: the customer's message leads to the person's answer
    assert [(m["role"], m["content"]) for m in records["parcel"] if m["role"] != "system"] == [
        ("user", PARCEL),
        ("assistant", PERSON),
    ]

    again = TrainOptions(
        data=(str(export),), out=models, base=str(models / "current"), epochs=60, learning_rate=3e-3,
        validation=0.0, warmup_ratio=0.0, **{**quiet, "batch_size": 2},
    )  # fmt: skip
    train(again, progress=print)
    second = ModelVersions(root=models).current()
    assert second is not None and second.version == "v2"
    card = json.loads((second.path / "card.json").read_text())
    assert card["data"]["written_by"] == {"correction": 1, "person": 1, "bot": 0}
    assert "staff corrections 1, people's replies 1" in (second.path / "report.md").read_text()

    greedy = EngineConfig(generation=GenerationConfig(max_new_tokens=48), handover_below=None)
    with Engine.from_folder(models / "current", config=greedy) as engine:
        conversation = engine.start()
        assert engine.reply(conversation.id, PASSWORD).text == CORRECTION
