"""Online experiments: the challenger measured on live traffic, then promoted or removed on what users did.

Real parts: the shipped team memories split by document, the bundled model (the champion: what `ace index` serves),
a query adapter trained for real on the training memories (the better challenger: +0.3 nDCG@10 on held-out memories,
see test_champion), an embedded Qdrant, the real retriever and vector store writing a real feedback log. Users are
simulated from the held-out labels with a position-biased click model (examine rank r with probability 1/r, accept
the relevant memory when examined).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from llama_index.core.schema import TextNode

from ace_llamaindex.cli import cli
from ace_llamaindex.deploy.experiment import (
    experiment_status,
    judge_experiment,
    running_experiment,
    set_share,
    start_experiment,
    stop_experiment,
)
from ace_llamaindex.deploy.rollout import rollout
from ace_llamaindex.errors import OptionError
from ace_llamaindex.records.experiment import ExperimentRecord
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.experiment_arms import CHALLENGER, CHAMPION, experiment_session, session_key, takes_part, team_draft
from ace_llamaindex.serve.feedback import QUERY_ID, judgements, read_log
from ace_llamaindex.serve.retriever import HybridQdrantRetriever
from ace_llamaindex.serve.serving_record import challenger_alias


@pytest.fixture(scope="module")
def team(tmp_path_factory, base_encoder):
    from ace_llamaindex.data.loading import DEMO_DATASET, load_dataset
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions, save_training_data
    from ace_llamaindex.train.adapter import adapter_trainer
    from ace_llamaindex.train.training import TrainConfig

    root = tmp_path_factory.mktemp("experiment")
    memories = load_dataset(DEMO_DATASET)
    train_set, test_set = memories.split(0.25, seed=0, by="document")
    examples = HardNegativeMiner("dense", base_encoder, options=MiningOptions(), show_progress=False).mine(train_set)
    data = save_training_data(examples, root / "all.json", source="team")
    result = adapter_trainer(examples, root / "adapter", TrainConfig(), base_encoder=base_encoder, training_data=data)
    assert result.gate.verdict == "better"
    return {"memories": memories, "test": test_set, "adapter": root / "adapter"}


def _release_everything() -> None:
    """Close what this process holds open (an embedded folder is one process's at a time)."""
    import gc

    from ace_llamaindex.index import edge_store, store

    for index in list(edge_store._OPEN.values()):
        index.close()
    store._close_open_clients()
    gc.collect()


def _ace(*args: str):
    result = CliRunner().invoke(cli, list(args))
    _release_everything()
    return result


def _serving(path: Path, memories, feedback_log: Path | None = None, engine: str = "local") -> HybridQdrantRetriever:
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(path), collection="mem", engine=engine,
                                      feedback_log=feedback_log)
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in memories.corpus.items()], show_progress=False)
    return retriever


def _users(retriever, test, n: int, seed: int = 0, session: bool = False) -> None:
    """``n`` queries about held-out memories; each user examines rank r with probability 1/r and accepts the memory
    the query is about when it is examined (a position-biased click model)."""
    rng = random.Random(seed)
    queries = sorted(test.queries)
    for i in range(n):
        qid = queries[rng.randrange(len(queries))]
        relevant = set(test.relevant_docs[qid])
        if session:
            with experiment_session(f"user-{rng.randrange(10_000)}"):
                nodes = retriever.retrieve(test.queries[qid])
        else:
            nodes = retriever.retrieve(test.queries[qid])
        for rank, node in enumerate(nodes, 1):
            if node.node.node_id in relevant and rng.random() < 1 / rank:
                retriever.record_feedback(node.node.metadata[QUERY_ID], node.node.node_id, True)


# ---- the parts -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("champion,challenger", [
    (["a", "b", "c", "d"], ["a", "b", "c", "d"]),  # the same ranking (an A/A experiment)
    (["a", "b", "c", "d"], ["e", "f", "g", "h"]),  # nothing in common
    (["a", "b", "c", "d"], ["b", "e", "a", "f"]),  # overlapping
    (["a", "b"], ["c", "d", "e", "f", "g"]),  # one side runs out
])
def test_team_draft_shows_both_rankings_best_first_with_balanced_teams(champion, challenger):
    for seed in range(20):
        shown = team_draft(champion, challenger, 4, f"q{seed}")
        docs = [d for d, _ in shown]
        assert len(docs) == len(set(docs)) == min(4, len(set(champion) | set(challenger)))
        for team, ranking in ((CHAMPION, champion), (CHALLENGER, challenger)):
            picked = [d for d, t in shown if t == team]
            assert all(d in ranking for d in picked)  # a team only shows its own results
            # each team's picks are its best results not already shown, in its order
            assert picked == [d for d in ranking if d in picked]
        if len(champion) >= 2 and len(challenger) >= 2:
            counts = [sum(t == team for _, t in shown) for team in (CHAMPION, CHALLENGER)]
            assert abs(counts[0] - counts[1]) <= 1
            assert champion[0] in docs and challenger[0] in docs  # both models' best result is shown
    assert team_draft(champion, challenger, 4, "same") == team_draft(champion, challenger, 4, "same")


def test_a_split_is_sticky_per_unit_near_its_share_and_a_ramp_only_moves_units_to_the_challenger():
    record = ExperimentRecord("mem", "mem", "mem__v1", mode="split", share=0.05)
    units = [f"user-{i}" for i in range(20_000)]
    canary = {u for u in units if takes_part(record, u)}
    assert abs(len(canary) / len(units) - 0.05) < 0.006
    assert all(takes_part(record, u) for u in list(canary)[:200])  # sticky: asked again, the same arm
    record.share = 0.25
    ramped = {u for u in units if takes_part(record, u)}
    assert canary <= ramped and abs(len(ramped) / len(units) - 0.25) < 0.012
    other = ExperimentRecord("mem", "mem", "mem__v1", mode="split", share=0.25)  # another experiment: other units
    assert {u for u in units if takes_part(other, u)} != ramped


@pytest.mark.parametrize("call,message", [
    (lambda loc: start_experiment("m", "mem", index=loc, share=0.0), "share must be in"),
    (lambda loc: start_experiment("m", "mem", index=loc, mode="ab"), "mode must be one of"),
    (lambda loc: start_experiment("m", "mem", index=loc, mode="split", share=1.0), "share must be below 1 in a split"),
    (lambda loc: start_experiment("m", "mem", index=loc, alpha=0.7), "alpha must be between 0 and 0.5"),
    (lambda loc: start_experiment("m", "mem", index=loc, min_effect=-1), "min_effect must be above 0"),
    (lambda loc: start_experiment("m", "mem", index=loc, min_effect=float("nan")), "min_effect must be above 0, got nan"),
    (lambda loc: start_experiment("m", "mem", index=loc, latency_ratio=float("nan")), "latency_ratio must be at least 1"),
    (lambda loc: experiment_status("mem", index=loc), "no online experiment runs on 'mem'"),
    (lambda loc: stop_experiment("mem", promote=True, index=loc), "no online experiment runs on 'mem'"),
    (lambda loc: set_share("mem", 0.5, index=loc), "no online experiment runs on 'mem'"),
])
def test_bad_experiment_requests_are_one_line(tmp_path, team, call, message):
    retriever = _serving(tmp_path / "q", team["memories"])
    with pytest.raises(OptionError, match=message):
        call(retriever.index)


def test_start_takes_the_options_the_record_declares():
    """Issue #39: start_experiment's options are ExperimentRecord's (declared once, with their flags); any other
    keyword, or one the start sets itself (the id, the plans), is a TypeError before anything is built."""
    from ace_llamaindex.records.experiment import START_OPTIONS

    assert "mode" in START_OPTIONS and "feedback_log" in START_OPTIONS and "challenger_plan" not in START_OPTIONS
    for bad in ("horizon", "id", "challenger_plan"):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{bad}'"):
            start_experiment("m", "mem", index=None, **{bad: 1})


# ---- end to end ----------------------------------------------------------------------------------------------------
def test_an_interleaved_list_holds_both_models_results_and_each_accepted_result_is_credited_to_its_team(tmp_path, team):
    log = tmp_path / "feedback.jsonl"
    retriever = _serving(tmp_path / "q", team["memories"], log)
    record = start_experiment(team["adapter"], "mem", index=retriever.index, feedback_log=log, show_progress=False)
    assert running_experiment(retriever.index, "mem").id == record.id
    champion_only = HybridQdrantRetriever(FineTunedEmbedding(), client=retriever.index.client,
                                          collection="mem", follow_rollouts=False)
    query = team["test"].queries[sorted(team["test"].queries)[0]]
    nodes = retriever.retrieve(query)
    served, _ = judgements(read_log(log))
    (row,) = served.values()
    assert row["experiment"]["id"] == record.id and row["experiment"]["arm"] is None
    teams = {r["doc_id"]: r["team"] for r in row["results"]}
    assert set(teams.values()) == {CHAMPION, CHALLENGER} and [n.node.node_id for n in nodes] == list(teams)
    champion_ids = [n.node.node_id for n in champion_only.retrieve(query)]
    assert all(d in champion_ids for d, t in teams.items() if t == CHAMPION)
    # accept one result of each team below the rankings' shared prefix in two queries: one win, one loss
    below = lambda r: {x["team"]: x["doc_id"] for x in r["results"][r["experiment"]["shared_prefix"]:]}  # noqa: E731
    retriever.record_feedback(row["query_id"], below(row)[CHALLENGER], True)
    second = retriever.retrieve(query)
    second_id = second[0].node.metadata[QUERY_ID]
    retriever.record_feedback(second_id, below(judgements(read_log(log))[0][second_id])[CHAMPION], True)
    status = judge_experiment(record, log)
    assert (status.wins, status.losses, status.ties, status.units) == (1, 1, 0, 2)
    assert status.decision == "continue" and status.needed and status.needed > 0


def test_a_better_challenger_is_promoted_while_users_keep_asking_and_a_fresh_retriever_serves_it_alone(tmp_path, team):
    log = tmp_path / "feedback.jsonl"
    retriever = _serving(tmp_path / "q", team["memories"], log)
    start_experiment(team["adapter"], "mem", index=retriever.index, feedback_log=log, auto=True, show_progress=False)
    status = None
    for batch in range(40):  # the status is read after every 10 queries, as a cron job would
        _users(retriever, team["test"], 10, seed=batch)
        status = experiment_status("mem", index=retriever.index)
        if status.acted:
            break
    assert status.decision == "promote" and status.acted.startswith("promoted"), status.reason
    assert status.delta["ci_low"] > 0 and status.wins > status.losses
    assert running_experiment(retriever.index, "mem") is None
    serving = retriever.index.alias_target("mem")
    assert serving == status.record.challenger and retriever.index.alias_target(challenger_alias("mem")) is None
    before = len(judgements(read_log(log))[0])
    retriever.retrieve(team["test"].queries[sorted(team["test"].queries)[0]])
    served, _ = judgements(read_log(log))
    latest = max(served.values(), key=lambda r: r["ts"])
    assert len(served) == before + 1 and "experiment" not in latest and latest["collection"] == serving


def test_a_worse_challenger_in_a_split_is_removed_and_the_champion_still_serves(tmp_path, team):
    log = tmp_path / "feedback.jsonl"
    retriever = _serving(tmp_path / "q", team["memories"], log)
    rollout(team["adapter"], "mem", index=retriever.index, show_progress=False)  # the adapter is the champion
    champion = retriever.index.alias_target("mem")
    from ace_llamaindex.embeddings.models import DEFAULT_MODEL

    record = start_experiment(DEFAULT_MODEL, "mem", index=retriever.index, mode="split", share=0.5, feedback_log=log,
                              auto=True, show_progress=False)
    status = None
    for batch in range(60):
        _users(retriever, team["test"], 20, seed=batch, session=True)
        status = experiment_status("mem", index=retriever.index)
        if status.acted:
            break
    assert status.decision == "end" and "worse" in status.reason and status.delta["ci_high"] < 0, status.reason
    assert retriever.index.alias_target("mem") == champion
    assert record.challenger not in retriever.index.collection_names()
    rows = [r for r in judgements(read_log(log))[0].values() if "experiment" in r]
    assert {r["experiment"]["arm"] for r in rows} == {CHAMPION, CHALLENGER}
    # each record names the collection that answered it
    assert all(r["collection"] == (record.challenger if r["experiment"]["arm"] == CHALLENGER else champion) for r in rows)


@pytest.mark.parametrize("how", ["experiment_session", "user_id-argument", "retriever-user_id"])
def test_sessions_keep_their_arm_through_the_retriever_and_the_log_carries_them(tmp_path, team, how):
    """Each user's queries stay on one model and carry the user (hashed) in the log, so a split is analysed per user;
    the status judges the real log."""
    log = tmp_path / "feedback.jsonl"
    retriever = _serving(tmp_path / "q", team["memories"], log)
    record = start_experiment(team["adapter"], "mem", index=retriever.index, mode="split", share=0.5,
                              feedback_log=log, show_progress=False)
    queries = list(team["test"].queries.values())[:4]
    for user in range(12):
        if how == "experiment_session":
            with experiment_session(f"user-{user}"):
                for q in queries:
                    retriever.retrieve(q)
        elif how == "user_id-argument":
            retriever.batch_retrieve(queries, user_id=f"user-{user}")
        else:
            own = HybridQdrantRetriever(FineTunedEmbedding(), client=retriever.index.client, collection="mem",
                                        feedback_log=log, user_id=f"user-{user}")
            for q in queries:
                own.retrieve(q)
    rows = sorted(judgements(read_log(log))[0].values(), key=lambda r: r["ts"])
    arms_by_user: dict[str, set] = {}
    for i, r in enumerate(rows):
        session = r["experiment"]["session"]
        assert session == session_key(f"user-{i // len(queries)}", record.id) and "user-" not in session
        arms_by_user.setdefault(session, set()).add(r["experiment"]["arm"])
    assert len(arms_by_user) == 12 and all(len(a) == 1 for a in arms_by_user.values())
    assert {next(iter(a)) for a in arms_by_user.values()} == {CHAMPION, CHALLENGER}
    status = judge_experiment(record, log)
    assert status.units == 48 and status.notes == []


def test_a_canary_ramps_up_in_phases_and_lowering_needs_asking(tmp_path, team, monkeypatch):
    from test_experiment_kills import covered_steps

    from ace_llamaindex.deploy import rollout as rollout_module

    passed: list[str] = []
    monkeypatch.setattr(rollout_module, "step_hook", passed.append)
    retriever = _serving(tmp_path / "q", team["memories"])
    record = start_experiment(team["adapter"], "mem", index=retriever.index, mode="split", share=0.05,
                              show_progress=False)
    assert record.phases == [[record.started, 0.05]]
    for share in (0.25, 0.5):
        assert set_share("mem", share, index=retriever.index).share == share
    running = running_experiment(retriever.index, "mem")
    assert [s for _, s in running.phases] == [0.05, 0.25, 0.5]
    assert running.phases[1][0] <= running.phases[2][0] and running.phase_of(running.phases[2][0]) == 2
    with pytest.raises(OptionError, match=r"share 0.25 is below the running share 0.5: .*--allow-lower"):
        set_share("mem", 0.25, index=retriever.index)
    assert running_experiment(retriever.index, "mem").share == 0.5  # refused: nothing changed
    assert [s for _, s in set_share("mem", 0.25, allow_lower=True, index=retriever.index).phases] == [0.05, 0.25, 0.5,
                                                                                                       0.25]
    stop_experiment("mem", promote=False, index=retriever.index)
    assert passed and set(passed) <= covered_steps(), set(passed) - covered_steps()  # each step has a kill row


def test_the_vector_store_opened_on_the_collection_takes_part(tmp_path, team, monkeypatch):
    from llama_index.core import VectorStoreIndex

    import ace_llamaindex.serve.vector_store as vector_store
    from ace_llamaindex.serve.vector_store import AceQdrantVectorStore

    log = tmp_path / "feedback.jsonl"
    retriever = _serving(tmp_path / "q", team["memories"])
    start_experiment(team["adapter"], "mem", index=retriever.index, feedback_log=log, show_progress=False)
    retriever.index.client.close()
    store = AceQdrantVectorStore("mem", path=str(tmp_path / "q"), engine="local", embed_model=FineTunedEmbedding(),
                                 feedback_log=log)
    index = VectorStoreIndex.from_vector_store(store, embed_model=FineTunedEmbedding())
    embedded = []  # both arms are timed the same way: each embeds the query text inside its clock
    real = vector_store.query_with_space
    monkeypatch.setattr(vector_store, "query_with_space", lambda model, text: embedded.append(model) or real(model, text))
    nodes = index.as_retriever(similarity_top_k=10).retrieve(team["test"].queries[sorted(team["test"].queries)[0]])
    (row,) = judgements(read_log(log))[0].values()
    assert {r["team"] for r in row["results"]} == {CHAMPION, CHALLENGER}
    assert [n.node.node_id for n in nodes] == [r["doc_id"] for r in row["results"]]
    assert len(embedded) == 2 and embedded[0] is store._embed_model and embedded[1] is not store._embed_model
    assert set(row["experiment"]["latency_ms"]) == {CHAMPION, CHALLENGER} and row["experiment"]["session"] is None


def test_the_vector_store_in_a_split_names_the_collection_that_answered(tmp_path, team):
    from ace_llamaindex.serve.vector_store import AceQdrantVectorStore

    log = tmp_path / "feedback.jsonl"
    retriever = _serving(tmp_path / "q", team["memories"])
    record = start_experiment(team["adapter"], "mem", index=retriever.index, mode="split", share=0.5, feedback_log=log,
                              show_progress=False)
    retriever.index.client.close()
    store = AceQdrantVectorStore("mem", path=str(tmp_path / "q"), engine="local", embed_model=FineTunedEmbedding(),
                                 feedback_log=log)
    from llama_index.core import VectorStoreIndex

    index = VectorStoreIndex.from_vector_store(store, embed_model=FineTunedEmbedding())
    for user in range(12):  # LlamaIndex passes vector_store_kwargs to the store's query
        index.as_retriever(similarity_top_k=5, vector_store_kwargs={"user_id": f"user-{user}"}).retrieve(
            team["test"].queries[sorted(team["test"].queries)[user]])
    rows = sorted(judgements(read_log(log))[0].values(), key=lambda r: r["ts"])
    assert [r["experiment"]["session"] for r in rows] == [session_key(f"user-{u}", record.id) for u in range(12)]
    assert {r["experiment"]["arm"] for r in rows} == {CHAMPION, CHALLENGER}
    assert all(r["collection"] == (record.challenger if r["experiment"]["arm"] == CHALLENGER else "mem") for r in rows)


def test_rollout_and_rollback_wait_for_the_experiment_to_end(tmp_path, team):
    retriever = _serving(tmp_path / "q", team["memories"])
    start_experiment(team["adapter"], "mem", index=retriever.index, show_progress=False)
    for call in (lambda: rollout(team["adapter"], "mem", index=retriever.index, show_progress=False, force=True),
                 lambda: __import__("ace_llamaindex.deploy.rollout", fromlist=["rollback"]).rollback(
                     "mem", index=retriever.index)):
        with pytest.raises(OptionError, match=r"an online experiment runs on 'mem' .*ace experiment stop"):
            call()
    assert stop_experiment("mem", promote=False, index=retriever.index) == "mem"


@pytest.mark.parametrize("kill_at", ["dropped-plain", "switched", "experiment-ended"])
def test_kill_9_during_a_promotion_leaves_exactly_one_model_serving(tmp_path, team, kill_at):
    """The CLI promotes in a process killed (SIGKILL) at each step; opened afresh, every query is served by one
    model, no experiment, and the next command goes on."""
    where = ["--collection", "mem", "--qdrant-path", str(tmp_path / "q"), "--engine", "local"]
    assert _ace("index", *where).exit_code == 0  # a plain collection: the promotion drops it first
    started = _ace("experiment", "start", str(team["adapter"]), *where, "--json")
    assert started.exit_code == 0, started.output
    challenger = json.loads(started.output)["challenger"]
    env = {**os.environ, "ACE_ROLLOUT_KILL_AT": kill_at}
    killed = subprocess.run([sys.executable, "-m", "ace_llamaindex.cli", "experiment", "stop", "--promote", *where],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(tmp_path / "q"), collection="mem", engine="local",
                                      feedback_log=tmp_path / "after.jsonl")
    nodes = retriever.retrieve(team["test"].queries[sorted(team["test"].queries)[0]])
    (row,) = judgements(read_log(tmp_path / "after.jsonl"))[0].values()
    assert "experiment" not in row and row["collection"] == challenger  # the promotion had begun: the challenger
    assert len({n.node.metadata["ace_served_by"] for n in nodes}) == 1
    assert running_experiment(retriever.index, "mem") is None
    del retriever
    _release_everything()
    status = _ace("experiment", "status", *where)
    assert status.exit_code != 0 and "no online experiment runs on 'mem'" in status.output
    again = _ace("rollback", *where)  # the next command goes on: back to the champion
    assert again.exit_code == 0 and "mem__v0" in again.output, again.output


def test_the_cli_status_prints_a_table_json_and_a_plot(tmp_path, team):
    log = tmp_path / "feedback.jsonl"
    where = ["--collection", "mem", "--qdrant-path", str(tmp_path / "q"), "--engine", "local"]
    assert _ace("index", *where).exit_code == 0
    assert _ace("experiment", "start", str(team["adapter"]), *where, "--feedback-log", str(log)).exit_code == 0
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(tmp_path / "q"), collection="mem", engine="local",
                                      feedback_log=log)
    _users(retriever, team["test"], 40)
    del retriever
    _release_everything()
    table = _ace("experiment", "status", *where, "--plot", str(tmp_path / "credit.png"))
    assert table.exit_code == 0 and "champion" in table.output and "challenger" in table.output, table.output
    assert "judged queries" in table.output
    assert (tmp_path / "credit.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads(_ace("experiment", "status", *where, "--json", "--no-act").stdout)
    assert data["units"] == data["wins"] + data["losses"] + data["ties"] > 0
    assert data["arms"]["champion"]["latency_p99_ms"] > 0 and data["trajectory"][-1][0] == data["units"]


def test_a_challenger_that_fails_never_fails_a_query_and_the_error_guardrail_ends_it(tmp_path, team):
    import shutil

    from ace_llamaindex.embeddings.query_adapter import ADAPTER_FILE

    log = tmp_path / "feedback.jsonl"
    challenger = tmp_path / "challenger"
    shutil.copytree(team["adapter"], challenger)
    retriever = _serving(tmp_path / "q", team["memories"], log)
    record = start_experiment(challenger, "mem", index=retriever.index, feedback_log=log, auto=True, show_progress=False)
    (challenger / ADAPTER_FILE).unlink()  # the challenger's weights vanish under a running experiment
    fresh = HybridQdrantRetriever(FineTunedEmbedding(), client=retriever.index.client, collection="mem", feedback_log=log)
    queries = list(team["test"].queries.values())
    for q in queries[:60]:
        assert fresh.retrieve(q)  # answered, by the champion
    rows = list(judgements(read_log(log))[0].values())
    assert len(rows) == 60 and all(r["experiment"]["error"].startswith("challenger:") for r in rows)
    assert all(r["experiment"]["served_by"] == CHAMPION and "team" not in r["results"][0] for r in rows)
    status = experiment_status("mem", index=retriever.index)
    assert status.decision == "end" and status.reason.startswith("guardrail: the challenger failed on 60 of 60")
    assert status.acted and record.challenger not in retriever.index.collection_names()
