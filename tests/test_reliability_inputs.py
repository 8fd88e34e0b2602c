"""Hostile inputs that used to crash with a traceback (issue 12).

Each gives one clear line naming the path (``PATH: message`` for the file
as a whole, ``PATH:LINE: $: message`` where reading stopped part-way),
exits non-zero and writes nothing:

* input files ``dpo convert`` / ``dpo validate`` cannot read: a truncated
  ``.jsonl.gz``, a ``.gz`` that is not gzip, corrupt Parquet, a folder
  named like a file, a file it may not read (root too), a file that disappears;
* YAML configs (``dpo merge``, ``dpo anneal``, ``dpo train --config``) whose
  aliases expand past the node budget (the "billion laughs"), that refer to
  themselves, or that nest deeper than the depth budget;
* a plugin module that exits (``sys.exit(3)``, ``SystemExit``, any
  BaseException but KeyboardInterrupt) while it is imported through
  ``--plugin``, ``DPO_PLUGINS`` or an entry point: a PluginError naming the
  module (and the distribution), not a silent end of the CLI.
"""

from __future__ import annotations

import ctypes
import gzip
import os
import re
import subprocess
import sys
import textwrap

import pytest

from dpo_plugins.cli import main
from dpo_plugins import plugins
from dpo_plugins.errors import ConfigError, DpoPluginsError, PluginError
from dpo_plugins.formats.files import read_rows
from dpo_plugins.workflows import config as yaml_config

ROW = b'{"prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.", "rejected": "It is not."}\n'


def _rows(count: int) -> bytes:
    return ROW * count


def _flipped(data: bytes, count: int, mask: int = 0xFF) -> bytes:
    """``data`` with ``count`` bytes from its middle XOR ``mask``: damage a reader only meets part-way."""
    middle = len(data) // 2
    return data[:middle] + bytes(byte ^ mask for byte in data[middle:middle + count]) + data[middle + count:]


def truncated_gzip(tmp_path):
    data = gzip.compress(_rows(3000))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_gzip(tmp_path):
    """Valid header and length, flipped bytes in the middle: a CRC or inflate error part-way."""
    path = tmp_path / "flipped.jsonl.gz"
    path.write_bytes(_flipped(gzip.compress(_rows(3000), compresslevel=1), 64, 0x55))
    return path


def not_gzip(tmp_path):
    path = tmp_path / "plain.jsonl.gz"
    path.write_bytes(_rows(2))
    return path


def _parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"question {i} " * 20, "chosen": "yes " * 30, "rejected": "no"} for i in range(4000)]
    path = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000, compression="none")
    return path.read_bytes()


def cut_parquet(tmp_path):
    data = _parquet(tmp_path)
    path = tmp_path / "cut.parquet"
    path.write_bytes(data[: len(data) // 2])
    return path


def garbled_parquet(tmp_path):
    """The footer is intact, a data page is not: it fails while reading rows."""
    path = tmp_path / "garbled.parquet"
    path.write_bytes(_flipped(_parquet(tmp_path), 2000))
    return path


def folder_named_jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.mkdir()
    (path / "inside.txt").write_text("not rows")
    return path


# (builder, what the one error line says, whether it names a line: reading stopped part-way)
BAD_INPUTS = {
    "truncated .jsonl.gz": (truncated_gzip, "truncated", True),
    "corrupt .jsonl.gz": (corrupt_gzip, "corrupt gzip data", True),
    ".gz that is not gzip": (not_gzip, "not gzip data", False),
    "parquet cut in half": (cut_parquet, "not a readable Parquet file", False),
    "parquet with a garbled page": (garbled_parquet, "corrupt Parquet data", True),
    "folder named x.jsonl": (folder_named_jsonl, "is a folder", False),
}


def _one_error_line(err: str, command: str, path, says: str, names_line: bool) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    where = rf"{re.escape(str(path))}:\d+: \$: " if names_line else rf"{re.escape(str(path))}: "
    assert re.match(rf"dpo {command}: error: {where}.*{says}", lines[0]), lines[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("detect", [True, False], ids=["detected", "--from"])
def test_convert_names_an_unreadable_input_and_writes_nothing(case, detect, tmp_path, capsys):
    build, says, names_line = BAD_INPUTS[case]
    source = build(tmp_path)
    before = sorted(os.listdir(tmp_path))
    out = tmp_path / "out.jsonl"
    args = ["convert", str(source), str(out), "--to", "azure"] + ([] if detect else ["--from", "hf"])
    assert main(args) == 1
    _one_error_line(capsys.readouterr().err, "convert", source, says, names_line)
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary folder left behind


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_validate_names_an_unreadable_input(case, tmp_path, capsys):
    build, says, names_line = BAD_INPUTS[case]
    source = build(tmp_path)
    assert main(["validate", str(source)]) == 1
    _one_error_line(capsys.readouterr().err, "validate", source, says, names_line)


def _obeying_file_permissions():
    """``preexec_fn``: the command obeys file permissions even as root (CI runs as root).

    Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so
    the program exec'd next has neither; without them root reads a mode-0
    file no more than anyone else. Other users need nothing dropped."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {capability})")


@pytest.mark.parametrize("command", [["convert", "--to", "azure"], ["convert", "--to", "azure", "--from", "hf"],
                                     ["validate"]], ids=["convert-detected", "convert---from", "validate"])
def test_a_file_it_may_not_read_is_one_line_and_writes_nothing(command, tmp_path):
    source = tmp_path / "locked.jsonl"
    source.write_bytes(_rows(2))
    source.chmod(0)
    before = sorted(os.listdir(tmp_path))
    paths = [str(source), str(tmp_path / "out.jsonl")] if command[0] == "convert" else [str(source)]
    result = subprocess.run([sys.executable, "-m", "dpo_plugins", command[0], *paths, *command[1:]],
                            capture_output=True, text=True, timeout=300, preexec_fn=_obeying_file_permissions)
    assert result.returncode == 1, result.stderr
    _one_error_line(result.stderr, command[0], source, "permission denied", False)
    assert sorted(os.listdir(tmp_path)) == before


def test_a_truncated_gzip_fails_even_with_skip_invalid(tmp_path, capsys):
    """Skipping is for bad lines; the rows after the cut are not bad, they are missing."""
    source = truncated_gzip(tmp_path)
    out = tmp_path / "out.jsonl"
    assert main(["convert", str(source), str(out), "--skip-invalid"]) == 1
    assert "truncated" in capsys.readouterr().err
    assert not out.exists()


def test_a_truncated_gzip_names_the_line_where_the_data_ends(tmp_path):
    source = truncated_gzip(tmp_path)
    seen = 0
    with pytest.raises(DpoPluginsError) as raised:
        for line, row in read_rows(source):
            assert isinstance(row, dict)  # every complete line before the cut is read
            seen = line
    assert seen > 100
    assert str(raised.value).startswith(f"{source}:{seen + 1}: $: ")


def test_a_file_that_disappears_before_it_is_read(tmp_path):
    source = tmp_path / "gone.jsonl"
    source.write_bytes(_rows(3))
    rows = read_rows(source)  # checked and opened lazily, as the pipeline does
    source.unlink()
    with pytest.raises(DpoPluginsError, match=rf"^{re.escape(str(source))}: .*disappeared"):
        list(rows)


def test_a_missing_input_is_one_line(tmp_path, capsys):
    source = tmp_path / "nowhere.jsonl"
    assert main(["validate", str(source)]) == 1
    _one_error_line(capsys.readouterr().err, "validate", source, "no such file", False)


# --- YAML configs -----------------------------------------------------------

BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""  # 9**9 "lol"s from 300 bytes


def _expanded_nodes(node) -> int:
    """The oracle: every node once per place it appears (aliases copied), by plain recursion."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        return 1 + sum(_expanded_nodes(key) + _expanded_nodes(value) for key, value in node.value)
    if isinstance(node, yaml.SequenceNode):
        return 1 + sum(_expanded_nodes(item) for item in node.value)
    return 1


def _aliased(copies: int) -> str:
    """A 100-node anchored list and one alias of it per line, from line 3 on."""
    return "base: &b [" + ", ".join(str(n) for n in range(99)) + "]\nrefs:\n" + "  - *b\n" * copies


@pytest.fixture
def yaml_reads(monkeypatch):
    """What a command asks of PyYAML: the parse events it draws, and every tree it builds (compose / load).

    A hostile config must be refused from its events alone, before the end
    of the file: no tree built, no alias expanded. That is what makes it
    quick, shown without a clock. ``reads["file_events"](text)`` counts all
    the events of ``text`` (uncounted)."""
    import yaml

    parse = yaml.parse
    reads = {"events": 0, "trees": [], "file_events": lambda text: sum(1 for _ in parse(text, Loader=yaml.SafeLoader))}

    def counted(*args, **kwargs):
        for event in parse(*args, **kwargs):
            reads["events"] += 1
            yield event

    def recorded(name, build):
        def building(*args, **kwargs):
            reads["trees"].append(name)
            return build(*args, **kwargs)
        return building

    monkeypatch.setattr(yaml, "parse", counted)
    for name in ("compose", "compose_all", "load", "load_all", "safe_load", "safe_load_all", "full_load", "unsafe_load"):
        monkeypatch.setattr(yaml, name, recorded(name, getattr(yaml, name)))
    return reads


def test_the_billion_laughs_is_refused_at_once_with_its_line(tmp_path, yaml_reads):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(ConfigError) as raised:
        yaml_config.load_yaml(path)
    assert yaml_reads["trees"] == [] and 0 < yaml_reads["events"] < yaml_reads["file_events"](BOMB)
    assert raised.value.problems == [
        f"{path}:5: $: more than {yaml_config.MAX_NODES:,} nodes with its aliases expanded "
        "(a YAML alias bomb?); a config is never this big"
    ]


def test_the_node_budget_is_exact_and_names_the_alias_that_crosses_it(tmp_path):
    import yaml

    copies = 1
    while _expanded_nodes(yaml.compose(_aliased(copies + 1))) <= yaml_config.MAX_NODES:
        copies += 1
    fits, over = tmp_path / "fits.yaml", tmp_path / "over.yaml"
    fits.write_text(_aliased(copies))
    over.write_text(_aliased(copies + 1))
    loaded = yaml_config.load_yaml(fits)
    assert len(loaded.data["refs"]) == copies and loaded.data["refs"][-1] == list(range(99))
    crossing = rf"^{re.escape(str(over))}:{copies + 3}: \$: more than {yaml_config.MAX_NODES:,} nodes"
    with pytest.raises(ConfigError, match=crossing):
        yaml_config.load_yaml(over)


def test_a_few_anchors_as_mergekit_configs_use_them_still_load(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("""merge_method: linear
models:
  - model: &model smollm2
    parameters: &half {weight: 0.5}
  - model: *model
    parameters:
      <<: *half
dtype: float32
""")
    loaded = yaml_config.load_yaml(path)
    assert loaded.data["models"] == [{"model": "smollm2", "parameters": {"weight": 0.5}}] * 2
    assert loaded.line_of(("models", 1, "model")) == 5  # where the alias is used, not where its anchor is
    assert loaded.line_of(("dtype",)) == 8


@pytest.mark.parametrize("text, line", [
    ("a: &a [*a]\n", 1),
    ("merge_method: linear\nx: &x\n  y: [1, 2]\n  z: *x\n", 4),
    ("a: &a 1\nb: &a [2, *a]\n", 2),  # *a means the latest &a, the list it is in
])
def test_a_recursive_alias_is_a_line_not_a_recursion_error(text, line, tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:{line}: \$: the alias \*\w+ is used inside "
                                          r"its own anchor"):
        yaml_config.load_yaml(path)


@pytest.mark.parametrize("style", ["flow", "block"])
def test_nesting_beyond_the_depth_budget_is_a_line(style, tmp_path):
    levels = yaml_config.MAX_DEPTH + 1
    if style == "flow":
        text, line = "x: " + "[" * levels + "]" * levels + "\n", 1
    else:  # key k<i> on line i opens the mapping of depth i + 1
        text, line = "".join("  " * i + f"k{i}:\n" for i in range(levels)) + "  " * levels + "leaf: 1\n", levels
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:{line}: \$: nested deeper than "
                                          rf"{yaml_config.MAX_DEPTH} levels"):
        yaml_config.load_yaml(path)
    inside = yaml_config.MAX_DEPTH - 1  # lists inside the root mapping: exactly the budget
    path.write_text("x: " + "[" * inside + "]" * inside + "\n")
    value = yaml_config.load_yaml(path).data["x"]
    for _ in range(inside - 1):
        value = value[0]
    assert value == []


@pytest.mark.parametrize("command", ["merge", "anneal", "train"])
@pytest.mark.parametrize("name", ["bomb", "loop", "deep"])
def test_every_yaml_command_refuses_a_hostile_config_in_a_moment_and_writes_nothing(
        command, name, tmp_path, monkeypatch, capsys, yaml_reads):
    text = {"bomb": BOMB, "loop": "a: &a [*a]\n", "deep": "x: " + "[" * 3000 + "]" * 3000 + "\n"}[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    extra = ["--output", str(tmp_path / "out")] if command == "merge" else []
    assert main([command, "--config", str(path)] + extra) == 1
    assert yaml_reads["trees"] == [] and 0 < yaml_reads["events"] < yaml_reads["file_events"](text)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.fullmatch(rf"dpo {command}: error: {re.escape(str(path))}:\d+: \$: [^\n]+\n", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# --- plugins that exit at import ---------------------------------------------

EXITS = {
    "sys.exit(3)": ("import sys\nsys.exit(3)\n", "SystemExit(3): a plugin must not exit the program"),
    "raise SystemExit('bye')": ("raise SystemExit('bye')\n", "SystemExit('bye'): a plugin must not exit the program"),
    "a BaseException subclass": ("class Stop(BaseException):\n    pass\nraise Stop('halt')\n", "Stop: halt"),
}


def _module(tmp_path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize("how", sorted(EXITS))
def test_a_plugin_option_module_that_exits_is_a_named_error(how, tmp_path, monkeypatch, capsys):
    body, says = EXITS[how]
    name = _module(tmp_path, monkeypatch, "exiting_plugin", body)
    assert main(["plugins", "--plugin", name]) == 1
    err = capsys.readouterr().err
    assert err == f"dpo plugins: error: cannot load plugin module 'exiting_plugin': {says}\n"
    assert plugins.pm.get_plugin(name) is None


def test_a_dpo_plugins_module_that_exits_is_a_named_error(tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, "exiting_env_plugin", "import sys\nsys.exit(3)\n")
    monkeypatch.setenv("DPO_PLUGINS", name)
    monkeypatch.setattr(plugins, "_loaded", False)  # load_plugins runs again, reading DPO_PLUGINS
    assert main(["plugins"]) == 1
    assert capsys.readouterr().err == (
        "dpo plugins: error: cannot load plugin module 'exiting_env_plugin': "
        "SystemExit(3): a plugin must not exit the program\n")


def test_keyboard_interrupt_during_a_plugin_import_stays_an_interrupt(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, "interrupted_plugin", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        plugins.load_module(name)


def test_an_entry_point_that_exits_names_its_distribution(tmp_path, run_dpo):
    site = tmp_path / "site"
    (site / "ep_exit").mkdir(parents=True)
    (site / "ep_exit" / "__init__.py").write_text("import sys\nsys.exit(3)\n")
    info = site / "dpo_plugins_ep_exit-0.4.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dpo-plugins-ep-exit\nVersion: 0.4.0\n")
    (info / "entry_points.txt").write_text("[dpo_plugins]\nexiting = ep_exit\n")
    result = run_dpo("plugins", env={"PYTHONPATH": str(site), "DPO_DISABLE_PLUGIN_AUTOLOAD": None})
    assert result.returncode == 1
    assert result.stderr == (
        "dpo plugins: error: cannot load plugin 'exiting' (entry point ep_exit of dpo-plugins-ep-exit 0.4.0): "
        "SystemExit(3): a plugin must not exit the program\n")


def test_a_registration_hook_that_exits_is_a_named_error(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, "exiting_hook_plugin", textwrap.dedent("""
        import sys
        from dpo_plugins import hookimpl

        @hookimpl
        def register_losses():
            sys.exit(4)
    """))
    plugins.load_module(name)
    try:
        with pytest.raises(PluginError, match=r"^plugin exiting_hook_plugin failed in register_losses\(\): "
                                              r"SystemExit\(4\): a plugin must not exit the program$"):
            plugins.get_losses()
    finally:
        plugins.pm.unregister(name=name)
