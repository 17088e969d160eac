"""Every console script, and every experiment's command line, follows the same conventions.

- its parser (``build_parser()``) is named after the script;
- every flag has help text, and every optional flag that takes a value (or is an on/off
  switch) names its default or says it is required;
- folders are ``--out-dir`` and single output files ``--output`` (older spellings only as hidden
  aliases);
- ``--device`` defaults to auto wherever a tool runs a model, ``--progress/--no-progress``
  wherever a tool reports progress;
- exit status 2 for a usage error (a bad flag, or a file a flag names that is not there), 1 for a
  runtime error.
"""

from __future__ import annotations

import argparse
import configparser
import importlib
from pathlib import Path
from types import ModuleType
from typing import Dict, List

import pytest

from biglittle_sam.checkpoint import CheckpointError
from biglittle_sam.train.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _scripts() -> Dict[str, str]:
    """Console script name -> the module (in this checkout) whose ``build_parser`` it runs."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    out: Dict[str, str] = {}
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (part.strip() for part in line.split("=", 1))
        module, function = target.split(":")
        if module == "biglittle_sam_tools.console":  # console.<tool> runs tools/<tool>.py
            out[name] = f"tools.{function}"
        else:
            out[name] = module.replace("biglittle_sam_demo", "demo").replace(
                "biglittle_sam_tools", "tools"
            )
    return out


# The experiments' command lines (run from a clone, not installed): name -> module.
EXPERIMENTS = {
    "python -m experiments.proxy": "experiments.proxy.cli",
    "gpu-check": "experiments.gpu_check",
}
SCRIPTS = {**_scripts(), **EXPERIMENTS}

# Tools that run a model (or a server of models) on a device of the user's choice.
DEVICE_TOOLS = {
    "biglittle-sam-amg",
    "biglittle-sam-benchmark",
    "biglittle-sam-cache-teacher",
    "biglittle-sam-demo",
    "biglittle-sam-distill",
    "biglittle-sam-eval",
    "biglittle-sam-finetune",
    "python -m experiments.proxy",
}
# The others have no --device, by design: they only move files (convert), write data
# (make-shapes), trace on the CPU (export-onnx), profile CPU time (profile), or check a CUDA GPU
# (gpu-check).

# Tools with a progress bar or progress lines.
PROGRESS_TOOLS = {
    "biglittle-sam-amg",
    "biglittle-sam-benchmark",
    "biglittle-sam-cache-teacher",
    "biglittle-sam-distill",
    "biglittle-sam-eval",
    "biglittle-sam-finetune",
    "python -m experiments.proxy",
    "gpu-check",
}
# The others report nothing while they work: one file (convert, export-onnx), seconds of
# generated data (make-shapes), a few profiled passes (profile), a server whose progress is shown in
# the browser (demo).

OLD_OUTPUT_FLAGS = {"--out", "--json", "--markdown", "--plot", "--outdir", "--output-dir"}


def _module(script: str) -> ModuleType:
    if script == "biglittle-sam-demo":
        pytest.importorskip("gradio")
    return importlib.import_module(SCRIPTS[script])


def _parser(script: str) -> argparse.ArgumentParser:
    return _module(script).build_parser()


def _visible(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS
    ]


def test_every_console_script_is_covered() -> None:
    assert len(SCRIPTS) >= 12 and "biglittle-sam-amg" in SCRIPTS
    assert DEVICE_TOOLS <= set(SCRIPTS) and PROGRESS_TOOLS <= set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_texts_and_defaults(script: str) -> None:
    parser = _parser(script)
    assert parser.prog == script
    for action in _visible(parser):
        flag = "/".join(action.option_strings)
        assert action.help and action.help.strip(), f"{script} {flag}: no help text"
        text = action.help.lower()
        switch = isinstance(action, argparse.BooleanOptionalAction)
        if (action.nargs != 0 or switch) and not action.required:
            assert "default" in text or "required" in text, f"{script} {flag}: default not shown"
    parser.format_help()  # every help string formats (no stray %)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_output_flags(script: str) -> None:
    for action in _visible(_parser(script)):
        for flag in action.option_strings:
            assert flag not in OLD_OUTPUT_FLAGS, f"{script}: {flag} (use --out-dir or --output)"
            if flag.startswith("--out"):
                assert flag in ("--out-dir", "--output"), f"{script}: {flag}"
    hidden = [a for a in _parser(script)._actions if a.help == argparse.SUPPRESS]
    for action in hidden:  # old spellings stay accepted, unlisted
        assert set(action.option_strings) <= OLD_OUTPUT_FLAGS, action.option_strings


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_device_defaults_to_auto(script: str) -> None:
    devices = [a for a in _parser(script)._actions if "--device" in a.option_strings]
    if script not in DEVICE_TOOLS:
        assert devices == [], f"{script}: has --device, add it to DEVICE_TOOLS"
        return
    assert len(devices) == 1, f"{script}: no --device"
    device = devices[0]
    # "auto" itself, or None where the library's own default (auto) applies and help says so
    assert device.default == "auto" or (device.default is None and "default: auto" in device.help)
    assert "auto" in device.help and "cuda:N" in device.help


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_progress_switch(script: str) -> None:
    switches = [a for a in _parser(script)._actions if "--progress" in a.option_strings]
    if script not in PROGRESS_TOOLS:
        assert switches == [], f"{script}: has --progress, add it to PROGRESS_TOOLS"
        return
    assert len(switches) == 1, f"{script}: no --progress/--no-progress"
    assert isinstance(switches[0], argparse.BooleanOptionalAction)
    assert switches[0].option_strings == ["--progress", "--no-progress"]
    assert switches[0].dest == "progress"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_unknown_flag_exits_2(script: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        _module(script).main(["--no-such-flag"])
    assert info.value.code == 2
    assert f"{script}: error:" in capsys.readouterr().err


def _missing_file_argv(script: str, tmp: Path) -> List[str]:
    missing = str(tmp / "missing")
    out = str(tmp / "out")
    return {
        "biglittle-sam-amg": ["--input", missing, "--output", out, "--model-type", "vit_tiny"],
        "biglittle-sam-cache-teacher": [
            "--images", missing, "--teacher-checkpoint", missing + ".pth", "--out-dir", out,
            "--device", "cpu", "--num-workers", "0",
        ],
        "biglittle-sam-convert": [
            "--encoder", missing + ".pth", "--sam-checkpoint", missing + ".pth", "--output", out,
        ],
        "biglittle-sam-distill": [
            "--cache", missing, "--images", missing, "--student", "bl_tiny", "--out-dir", out,
            "--device", "cpu", "--num-workers", "0",
        ],
        "biglittle-sam-eval": ["--images", missing, "--model", "vit_tiny", "--out-dir", out],
        "biglittle-sam-export-onnx": [
            "--model", "bl_tiny", "--checkpoint", missing + ".pth", "--out-dir", out,
        ],
        "biglittle-sam-finetune": [
            "--images", missing, "--model", "vit_tiny", "--out-dir", out, "--device", "cpu",
            "--num-workers", "0",
        ],
        "biglittle-sam-profile": ["--model", "no_such_model"],
        "biglittle-sam-make-shapes": ["--out-dir", out, "--sizes", "big"],
        "python -m experiments.proxy": ["--keep-ratios", "0", "--out-dir", out],
        "gpu-check": ["--repeats", "many", "--out-dir", out],
        "biglittle-sam-benchmark": ["--pool-kv-ratios", "half"],
        "biglittle-sam-demo": ["--port", "http"],
    }[script]  # fmt: skip


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_usage_error_exits_2_with_one_line(script: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        _module(script).main(_missing_file_argv(script, tmp_path))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or script == "biglittle-sam-make-shapes"


@pytest.mark.parametrize(
    "error,status",
    [
        (ValueError("a setting"), 2),
        (CheckpointError("a checkpoint of another model"), 2),
        (FileNotFoundError("no such file"), 2),
        (FileExistsError("output exists"), 2),
        (OSError(28, "No space left on device"), 1),
        (ImportError("pip install biglittle-sam[eval]"), 1),
    ],
)
def test_usage_errors_exit_2_runtime_errors_1(error: Exception, status: int, capsys) -> None:
    def fail() -> None:
        raise error

    with pytest.raises(SystemExit) as info:
        run_cli(fail)
    assert info.value.code == status
    assert capsys.readouterr().err.startswith("error: ")
