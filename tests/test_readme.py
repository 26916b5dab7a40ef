"""The README's library example runs as written."""

import re
from pathlib import Path


def test_library_example_runs(capsys):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Using fedra_core as a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert "blocks.0." in capsys.readouterr().out
