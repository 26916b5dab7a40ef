"""The README's library example runs as written and its aggregation is the per-block mean; the
README's method table is the registry's."""

import re
from pathlib import Path

import torch

from fedra_core.methods import get_method, method_names
from fedra_core.state import block_of_key

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_library_example_runs_and_averages_each_block_over_its_holders():
    section = README.split("## Using fedra_core as a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    allocation, replies, global_state = ns["allocation"], ns["replies"], ns["global_state"]
    checked = 0
    for key, value in global_state.items():
        j = block_of_key(key)
        holders = [i for i in range(len(replies)) if j is None or allocation[i, j]]
        if holders:  # computed here by hand: the mean over the clients whose row holds the block
            expected = torch.stack([replies[i][key] for i in holders]).mean(0)
            assert torch.allclose(value, expected, atol=1e-7), key
            checked += 1
    assert checked == sum(1 for k in global_state if block_of_key(k) is None or allocation[:, block_of_key(k)].any())


def test_method_table_is_the_registry():
    table = README.split("<!-- methods-table:", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| (.+?) \|$", table, re.M))
    rows.pop("method")  # the header
    assert rows == {name: get_method(name).summary for name in method_names()}


def _row(key: str) -> str:
    """The README table row of ``key`` (its first cell is the key in backticks)."""
    return re.search(rf"^\| `{re.escape(key)}` \|.*$", README, re.M).group(0)


def test_dataset_and_data_format_rows_name_every_registered_one():
    from fedra_core.data.registry import dataset_names, node_formats

    cells = lambda key: re.split(r"(?<!\\)\|", _row(key))  # noqa: E731  (a "\|" inside a cell is no border)
    assert set(re.findall(r"`([a-z-]+)`", cells("dataset")[3])) >= set(dataset_names())
    named = set(re.findall(r"`([a-z-]+)`", cells("data-format")[2]))  # text-jsonl has a hyphen
    assert set(node_formats()) <= named, set(node_formats()) - named
