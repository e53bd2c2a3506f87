"""Importers of public LLM inference traces (docs/replay.md): the cost model computed by hand, bad rows named."""

from __future__ import annotations

import json

import pytest
from conftest import altlas

from altlas_dask.simulation.importers import import_trace
from altlas_dask.simulation.trace import TraceError, read_trace

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,8000,109
2023-11-16 18:15:51.2224670,879,55
"""


def test_azure_rows_keep_their_times_and_get_work_memory_and_cost_from_their_tokens(tmp_path) -> None:
    path = tmp_path / "AzureLLMInferenceTrace_code.csv"
    path.write_text(AZURE)
    tasks = import_trace("azure-llm", path, start=1, count=2)
    assert [t.t for t in tasks] == [0.0, pytest.approx(0.227298)]  # from the window's first request
    big = tasks[0]
    assert big.task_type == "code" and big.cost == 8109
    assert big.work_gflop == 0.25 * 8000 + 1.5 * 109  # prefill + decode
    assert big.memory_mb == 1024 + 2 * 8109  # over a T4's 90% of 16 GB: only an A100 takes it


def test_mooncake_keys_a_request_by_its_conversation_and_credits_the_prefix_seen_before(tmp_path) -> None:
    rows = [
        {"timestamp": 0, "input_length": 1500, "output_length": 10, "hash_ids": [0, 1, 2]},
        {"timestamp": 500, "input_length": 2000, "output_length": 20, "hash_ids": [0, 1, 2, 3]},
        {"timestamp": 750, "input_length": 900, "output_length": 5, "hash_ids": [0, 9]},
    ]
    path = tmp_path / "conversation_trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second, other = import_trace("mooncake", path)
    assert (first.affinity, second.affinity, other.affinity) == ("prefix-0-1", "prefix-0-1", "prefix-0-9")
    assert (first.affinity_gflop, second.affinity_gflop) == (0.0, 0.25 * 3 * 512)  # 3 blocks cached
    assert second.t == 0.5 and second.cost == 2020


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", "'TIMESTAMP' = 'yesterday'"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,-4,2\n", "'ContextTokens' = -4"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,ten,2\n", "'ContextTokens' = 'ten'"),
    ],
)
def test_a_bad_row_is_named_with_its_line_field_and_value(tmp_path, text: str, words: str) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match="trace.csv line 2") as info:
        import_trace("azure-llm", path)
    assert words in str(info.value)


def test_replay_format_converts_and_writes_the_window(tmp_path) -> None:
    source = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    source.write_text(AZURE)
    out = tmp_path / "window.jsonl"
    run = altlas("replay", "--format", "azure-llm", str(source), "--window", "1:2", "--write-trace", str(out),
                 "--out", str(tmp_path), "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert [t.id for t in read_trace(out)] == ["chat-1", "chat-2"]
    assert json.loads(run.stdout)["strategies"][0]["done"] == 2
    bad = altlas("replay", "--format", "azure-llm", str(source), "--window", "2", "--out", str(tmp_path))
    assert bad.returncode == 2 and "START:COUNT" in bad.stderr
