"""pytest plugin of ttt-checks (registered through the ``pytest11`` entry point).

Everything pytest needs to run the health checks lives here, in one module: the ``ttt-checks``
option group, the markers, the session-scoped :class:`~ttt_checks.run.HealthRun` that measures
a checkpoint once, the ``ttt_check`` fixture that turns verdicts into assertions, JUnit
properties and attachments, and the report written when the session ends.

Exit codes follow pytest's contract, which is what a checkpoint gate reads: 0 every check
passed, 1 some check failed (unhealthy), 2 interrupted, 3 internal error, 4 usage error
(a bad option: unknown threshold, --device cuda without a GPU, ...), 5 no tests collected.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest

MARKERS = {
    "gpu": "health checks run against --ckpt (CPU works; named for how clusters run them)",
    "slow": "long-running tests (training, long sequences)",
}

MOSHI_BASE_OPTIONS = ("hf_repo", "moshi_weight", "mimi_weight", "tokenizer", "mimi_config")

_RUN_KEY = pytest.StashKey["object"]()
_OPTIONS_KEY = pytest.StashKey["object"]()
_REPORT_PATHS_KEY = pytest.StashKey[dict]()
_LATE_MERGE_KEY = pytest.StashKey[tuple]()  # (report_dir, complete): workers not finished at sessionfinish
_UNSTARTED_KEY = pytest.StashKey[str]()  # why the ttt_run fixture has no run (load failed, or interrupted)
_LOAD_ERROR_KEY = pytest.StashKey[tuple[str, str]]()  # (exception type, message) of a checkpoint that failed to load


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ttt-checks", "ttt-checks: health checks of a TTT checkpoint")
    group.addoption("--ckpt", default=None, help="checkpoint to check (default: the embedded healthy reference model)")
    group.addoption("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: cuda when available)")
    group.addoption("--require-gpu", action="store_true", help="a missing GPU is a usage error (for gates on GPU nodes)")
    group.addoption("--report-dir", default=None, help="where the run writes its report (default reports/<run-id>)")
    group.addoption("--gates", default="0,learned,0.3,0.5,1",
                    help="gating sweep: raw alpha values and 'learned' (reports show alpha and tanh(alpha))")
    group.addoption("--input", default=None, help="input for the teacher-forced pass and the sweep (prompts file or wav)")
    group.addoption("--max-positions", type=int, default=None, help="cut the teacher-forced input to this many positions")
    group.addoption("--baseline", default=None, help="metrics.json of an earlier run to compare against")
    group.addoption("--update-baseline", action="store_true", help="write this run's metrics to --baseline")
    group.addoption("--base-reference", default=None,
                    help="metrics.json of a known-good checkpoint on the same base and input: its gate-0 loss is the base "
                         "model's reference (check base_model)")
    group.addoption("--ttt-layers", default=None, help="comma-separated TTT layer names or block indices to check")
    group.addoption("--threshold", action="append", default=[], metavar="NAME=VALUE",
                    help="override one threshold (repeatable); names: see [tool.ttt_checks] in pyproject.toml")
    group.addoption("--asr", default="default", help="Whisper backend: default | faster-whisper:PATH | openai-whisper:NAME")
    group.addoption("--hf-repo", default=None, help="Moshi base weights: HF repo id in the local cache (default kyutai/moshiko-pytorch-bf16)")
    group.addoption("--moshi-weight", default=None, help="Moshi base LM weights (safetensors), instead of --hf-repo")
    group.addoption("--mimi-weight", default=None, help="Mimi codec weights (safetensors), instead of --hf-repo")
    group.addoption("--tokenizer", default=None, help="Moshi text tokenizer (sentencepiece .model), instead of --hf-repo")
    group.addoption("--mimi-config", default=None, help="Mimi config JSON for non-default (e.g. tiny) Mimi models")
    group.addoption("--trust-pickle", action="store_true",
                    help="allow pickle weights (ttt.pt, lora.pt, ...): pickle can run code; it is loaded with "
                         "torch.load(weights_only=True). Without it only safetensors load")


def pytest_configure(config: pytest.Config) -> None:
    from ttt_checks.xdist_gpu import pin_xdist_worker_gpu

    if hasattr(config, "workerinput"):  # only a worker of this session, not a child pytest that inherited its env
        pin_xdist_worker_gpu()  # one GPU of the inherited CUDA_VISIBLE_DEVICES, before CUDA starts
    else:
        config.pluginmanager.register(_LateMerge(), "ttt-checks-late-merge")
    _sigterm_interrupts(config)
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if hasattr(config, "workerinput"):  # xdist worker: the controller validated the options
        return
    # Validate every option up front: a bad one is a usage error (exit 4), never a green run.
    _options(config)


def _sigterm_interrupts(config: pytest.Config) -> None:
    """SIGTERM (scancel, a CI timeout, `kill`) ends the session like Ctrl-C does.

    By default SIGTERM kills Python outright, so pytest never reaches sessionfinish and the
    report and JUnit XML are lost. Raising KeyboardInterrupt instead lets pytest stop the current
    test, write JUnit, and call sessionfinish, which writes the report marked incomplete. A handler
    someone else installed (e.g. a job script's Python wrapper) is left alone, and a second
    SIGTERM kills as before.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if not hasattr(config, "workerinput"):  # xdist workers ignore SIGINT on purpose: the controller handles it
        from ttt_checks import restore_sigint

        restore_sigint()
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt("SIGTERM: the run was terminated; the report is marked incomplete")

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, previous))


def _device(config: pytest.Config) -> str:
    requested = config.getoption("--device")
    if requested == "cpu" and not config.getoption("--require-gpu"):
        return "cpu"  # no need to import torch just to validate options
    import torch

    has_cuda = torch.cuda.is_available()
    if config.getoption("--require-gpu") and not has_cuda:
        raise pytest.UsageError("--require-gpu: no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES, the driver, --gres)")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested.startswith("cuda"):
        if not has_cuda:
            raise pytest.UsageError(f"--device {requested}: no CUDA GPU is visible; use --device cpu or run on a GPU node")
        index = requested.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise pytest.UsageError(f"--device {requested}: {torch.cuda.device_count()} GPU(s) visible")
        return requested
    raise pytest.UsageError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N")


def _options(config: pytest.Config):
    if _OPTIONS_KEY in config.stash:
        return config.stash[_OPTIONS_KEY]
    from ttt_checks.checks.thresholds import ThresholdError, load_thresholds, parse_threshold_overrides
    from ttt_checks.run import RunError, RunOptions, new_run_id, parse_gates

    try:
        overrides = parse_threshold_overrides(config.getoption("--threshold"))
        thresholds = load_thresholds(config.rootpath / "pyproject.toml", overrides)
        gates = parse_gates(config.getoption("--gates"))
    except (ThresholdError, RunError) as exc:
        raise pytest.UsageError(str(exc)) from None
    max_positions = config.getoption("--max-positions")
    if max_positions is not None and max_positions < 2:
        raise pytest.UsageError(f"--max-positions {max_positions}: need at least 2 positions")
    ckpt = config.getoption("--ckpt")
    report_dir = config.getoption("--report-dir")
    if hasattr(config, "workerinput") and "ttt_report_dir" in config.workerinput:
        report_dir = config.workerinput["ttt_report_dir"]  # the controller's run directory
    report_dir = Path(report_dir) if report_dir else config.rootpath / "reports" / new_run_id(Path(ckpt) if ckpt else None)
    layers = config.getoption("--ttt-layers")
    options = RunOptions(
        report_dir=report_dir.resolve(),
        gates=gates,
        thresholds=thresholds,
        input_path=Path(config.getoption("--input")) if config.getoption("--input") else None,
        max_positions=max_positions,
        ttt_layers=[x.strip() for x in layers.split(",") if x.strip()] if layers else None,
        asr=config.getoption("--asr"),
        baseline=Path(config.getoption("--baseline")) if config.getoption("--baseline") else None,
        update_baseline=config.getoption("--update-baseline"),
        base_reference=Path(config.getoption("--base-reference")) if config.getoption("--base-reference") else None,
        pyproject=config.rootpath / "pyproject.toml",
    )
    if options.update_baseline and options.baseline is None:
        raise pytest.UsageError("--update-baseline needs --baseline PATH (the file to write)")
    options.device = _device(config)
    _check_cheap_inputs(config, options)
    config.stash[_OPTIONS_KEY] = options
    return options


def _check_cheap_inputs(config: pytest.Config, options) -> None:
    """What can be checked without loading a model is checked before any test runs (exit 4)."""
    from ttt_checks.models.registry import CheckpointResolutionError, detect

    if config.getoption("--ckpt") is not None or _runs_health_checks(config):
        try:
            detect(config.getoption("--ckpt"))
        except CheckpointResolutionError as exc:
            raise pytest.UsageError(str(exc)) from None
    if options.input_path is not None:
        if not options.input_path.exists():
            raise pytest.UsageError(f"--input {options.input_path}: no such file")
        from ttt_checks.models.base import InputError
        from ttt_checks.models.registry import check_input

        try:  # the file is judged for the model that will read it (speech for Moshi, text for the reference)
            family, _ = detect(config.getoption("--ckpt"))
        except CheckpointResolutionError as exc:
            raise pytest.UsageError(str(exc)) from None
        try:
            check_input(family, options.input_path, options.max_positions)  # notes are said by the run itself
        except InputError as exc:
            raise pytest.UsageError(f"--input {exc}") from None
    if options.baseline is not None and not options.update_baseline and not options.baseline.is_file():
        raise pytest.UsageError(f"--baseline {options.baseline}: no such file; create it from a good run with "
                                "--update-baseline, or leave --baseline out")
    if options.base_reference is not None:
        from ttt_checks.checks.base_model import BaseReferenceError, reference_from_metrics

        try:
            reference_from_metrics(options.base_reference)
        except BaseReferenceError as exc:
            raise pytest.UsageError(str(exc)) from None
    if options.asr != "default":
        from ttt_checks.asr import AsrSpec, parse_asr_spec
        from ttt_checks.asr.transcript import AsrError

        try:
            spec: AsrSpec = parse_asr_spec(options.asr)
        except AsrError as exc:
            raise pytest.UsageError(f"--asr {options.asr}: {exc}") from None
        if spec.model != "default" and ("/" in spec.model or spec.model.startswith(".")) and not Path(spec.model).exists():
            raise pytest.UsageError(f"--asr {options.asr}: the model path {spec.model} does not exist")
    try:
        options.report_dir.mkdir(parents=True, exist_ok=True)
        probe = options.report_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise pytest.UsageError(f"--report-dir {options.report_dir}: not writable ({exc}); pass a writable --report-dir") from None


def _runs_health_checks(config: pytest.Config) -> bool:
    """True when the selection includes the health checks (so the default checkpoint is needed)."""
    return any("tests_gpu" in str(a) for a in config.args) or config.getoption("markexpr") == "gpu"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker writes under the controller's run directory."""
    node.workerinput["ttt_report_dir"] = str(_options(node.config).report_dir)


@pytest.fixture(scope="session")
def ttt_run(request: pytest.FixtureRequest):
    """The health run of --ckpt: every check of the session reads the same measurements."""
    from ttt_checks.models.registry import resolve
    from ttt_checks.run import HealthRun

    config = request.config
    options = _options(config)
    # An xdist worker of this session writes its own subfolder; the report merges them. Read from
    # the config, not PYTEST_XDIST_WORKER: a pytest started by a test inside a worker inherits that
    # variable without being a worker, and must write where it was told.
    worker = config.workerinput.get("workerid") if hasattr(config, "workerinput") else None
    if worker:
        options.report_dir = options.report_dir / worker
    tr = config.pluginmanager.get_plugin("terminalreporter")

    capture = config.pluginmanager.getplugin("capturemanager")

    def progress(message: str) -> None:
        if tr is None or config.getoption("verbose") < 0 or worker:
            return
        # Long steps run inside a test, while pytest captures fd 1: step outside the capture so
        # the line reaches the terminal (and not the test's captured output).
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            tr.write_line(f"[ttt-checks] {message}")

    progress(f"loading checkpoint {config.getoption('--ckpt') or '(embedded default)'} on {options.device}")
    config.stash[_UNSTARTED_KEY] = "the run was interrupted while the checkpoint was loading"
    try:
        adapter = resolve(config.getoption("--ckpt"), device=options.device, trust_pickle=config.getoption("--trust-pickle"),
                          **{name: config.getoption(f"--{name.replace('_', '-')}") for name in MOSHI_BASE_OPTIONS})
    except Exception as exc:  # every test of the run fails with the cause, not a bare traceback
        adapter = None
        config.stash[_UNSTARTED_KEY] = (f"could not load the checkpoint {config.getoption('--ckpt') or '(embedded default)'}: "
                                        f"{type(exc).__name__}: {exc}")
        config.stash[_LOAD_ERROR_KEY] = (type(exc).__name__, str(exc))
    if adapter is None:  # failed outside the except block, so pytest prints the cause once, not its chain
        pytest.fail(config.stash[_UNSTARTED_KEY], pytrace=False)
    run = HealthRun(adapter, options, progress=progress)
    config.stash[_RUN_KEY] = run
    del config.stash[_UNSTARTED_KEY]
    return run


@pytest.fixture
def ttt_check(ttt_run, record_property, capsys) -> Callable[[str], list]:
    """``ttt_check("figure5_ordering")``: judge one check, record measured vs threshold, attach
    the evidence, and fail with every failing verdict's explanation."""

    def check(name: str):
        verdicts = ttt_run.judge(name)
        for v in verdicts:
            key = f"{name}[{v.layer}]" if v.layer else name
            record_property(f"{key}.ok", v.ok)
            record_property(f"{key}.measured", v.measured)
            record_property(f"{key}.threshold", v.threshold)
            print(v.line())
        for path in ttt_run.artifacts.get(name, []):
            print(f"[[ATTACHMENT|{Path(path).resolve()}]]")
        failing = [v for v in verdicts if not v.ok]
        if failing:
            pytest.fail("\n".join(v.line() for v in failing), pytrace=False)
        return verdicts

    return check


@pytest.hookimpl(tryfirst=True)  # before junitxml writes its file, so the diagnosis properties are in it
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the report: this process's run, or (xdist controller) the merge of the workers'."""
    from ttt_checks.report import merge_workers, write_report

    complete = exitstatus != pytest.ExitCode.INTERRUPTED
    run = session.config.stash.get(_RUN_KEY, None)
    if run is not None:
        metrics = run.metrics(complete=complete)
        paths = write_report(metrics, run.report_dir)
        if run.options.update_baseline and complete and not hasattr(session.config, "workerinput"):
            from ttt_checks.report.files import write_json_atomic

            write_json_atomic(run.options.baseline, metrics)  # only ever rewritten on request
    elif _UNSTARTED_KEY in session.config.stash:
        # The checkpoint never loaded: the report still exists and says why, as a failed check.
        paths = write_report(_unstarted_metrics(session.config, complete), session.config.stash[_OPTIONS_KEY].report_dir)
    elif not hasattr(session.config, "workerinput") and _OPTIONS_KEY in session.config.stash:
        report_dir = session.config.stash[_OPTIONS_KEY].report_dir
        merged = merge_workers(report_dir, complete=complete) if report_dir.is_dir() else None
        if merged is None:
            # Interrupted (Ctrl-C, SIGTERM): xdist stops its workers after this hook, and they write
            # their partial reports then; _LateMerge merges them last.
            session.config.stash[_LATE_MERGE_KEY] = (report_dir, complete)
            return
        paths = write_report(merged, report_dir)
    else:
        return
    if not hasattr(session.config, "workerinput"):
        session.config.stash[_REPORT_PATHS_KEY] = paths
        _junit_diagnosis_properties(session.config, paths["metrics"])


class _LateMerge:
    """The xdist controller's report when the workers finished only after the main sessionfinish
    (an interrupted run): merged at the very end, so it is never lost (JUnit is written by then,
    without the diagnosis properties; the report has them)."""

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from ttt_checks.report import merge_workers, write_report

        pending = session.config.stash.get(_LATE_MERGE_KEY, None)
        if pending is None:
            return
        report_dir, complete = pending
        merged = merge_workers(report_dir, complete=complete) if report_dir.is_dir() else None
        if merged is not None:
            session.config.stash[_REPORT_PATHS_KEY] = write_report(merged, report_dir)


def junit_diagnosis_properties(diagnosis: dict) -> list[tuple[str, str]]:
    """``diagnosis.healthy``, ``diagnosis.summary`` and per ranked finding ``diagnosis.<rank>.rule``,
    ``.title``, ``.cause``, ``.fix``, ``.config_key``, ``.value``, ``.confidence``: testsuite
    properties of the JUnit file, so a CI page shows the conclusion, not only red test names."""
    props = [("diagnosis.healthy", str(bool(diagnosis.get("healthy"))).lower()), ("diagnosis.summary", str(diagnosis.get("summary", "")))]
    for f in diagnosis.get("findings") or []:
        rank = f.get("rank")
        for key in ("rule", "title", "cause", "fix", "config_key", "value", "confidence"):
            if f.get(key) is not None:
                props.append((f"diagnosis.{rank}.{key}", str(f[key])))
    return props


def junit_measurement_properties(metrics: dict) -> list[tuple[str, str]]:
    """The numbers a reviewer reads first, as testsuite properties: per TTT layer the means of the
    Figure-5 curves (``layer.<name>.mean_l0`` / ``mean_lprev`` / ``mean_lafter`` / ``mean_lmean``, the
    mean predictor's loss, and ``l0_to_lmean``, the ratio figure5_bounded judges) and the gate's mean
    |tanh(alpha)| (``layer.<name>.gate_mean_abs_tanh``), and the outer loss at the learned gate and at
    gate 0 with the relative gain (``outer_loss.learned``, ``outer_loss.gate0``,
    ``outer_loss.relative_decrease``). A number the run did not measure is left out, never 0."""
    from ttt_checks.verdict import finite_or_none

    props: list[tuple[str, str]] = []

    def add(name: str, value: object) -> None:
        number = finite_or_none(value)
        if number is not None:
            props.append((name, f"{number:.6g}"))

    for layer, stats in sorted((metrics.get("figure5") or {}).items()):
        for curve in ("mean_l0", "mean_lprev", "mean_lafter", "mean_lmean", "l0_to_lmean"):
            add(f"layer.{layer}.{curve}", (stats or {}).get(curve))
    for v in (metrics.get("verdicts") or {}).get("gate_stats") or []:
        if v.get("layer"):
            add(f"layer.{v['layer']}.gate_mean_abs_tanh", (v.get("details") or {}).get("mean_tanh"))
    outer = metrics.get("outer_loss") or {}
    add("outer_loss.learned", outer.get("learned"))
    add("outer_loss.gate0", outer.get("gate0"))
    for v in (metrics.get("verdicts") or {}).get("ttt_helps") or []:
        add("outer_loss.relative_decrease", (v.get("details") or {}).get("relative_decrease"))
    return props


def _junit_diagnosis_properties(config: pytest.Config, metrics_path: Path) -> None:
    """Add the report's diagnosis and headline measurements to the JUnit file as testsuite
    properties (when --junitxml is on)."""
    import json

    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is None:
        return
    try:
        metrics = json.loads(Path(metrics_path).read_text())
    except (OSError, ValueError):
        return
    for name, value in [*junit_diagnosis_properties(metrics.get("diagnosis") or {}), *junit_measurement_properties(metrics)]:
        xml.add_global_property(name, value)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Where the report is, on its own line after pytest's results (not glued to the progress)."""
    paths = config.stash.get(_REPORT_PATHS_KEY, None)
    if paths is not None:
        terminalreporter.write_line(f"ttt-checks report: {paths['report']}  (html: {paths['html']}, metrics: {paths['metrics']})")


def _unstarted_metrics(config: pytest.Config, complete: bool) -> dict:
    """The report data of a run that never measured anything: one failed ``checkpoint_load`` check."""
    from ttt_checks.run import gate_label
    from ttt_checks.verdict import cannot_measure, jsonable

    options = config.stash[_OPTIONS_KEY]
    error = config.stash.get(_LOAD_ERROR_KEY, None)
    details = ({"stage": "load", "error_type": error[0], "load_error": error[1]} if error
               else {"stage": "interrupted"})
    verdict = cannot_measure("checkpoint_load", config.stash[_UNSTARTED_KEY], details=details)
    return jsonable({
        "checkpoint": config.getoption("--ckpt"), "adapter": None, "report_dir": str(options.report_dir),
        "complete": complete, "thresholds": options.thresholds, "gates": [gate_label(g) for g in options.gates],
        "verdicts": {"checkpoint_load": [verdict.to_dict()]}, "artifacts": {},
    })
