"""``archlab bench``: time models on this machine, against torchvision / timm in the same run (:mod:`archlab.bench`
does the timing), and print a table, JSON or a plot."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from archlab.bench import SOURCES, Contender, Settings, bench_row, build_ours, build_reference, reference_for, summarize
from archlab.cli.args import CLIError, nonneg_int, plot_path, positive_int, positive_ints
from archlab.cli.output import console, draw_plot, print_json, transient_progress
from archlab.deploy.precision import check_precision, require_bf16
from archlab.deploy.runtimes import RUNTIMES, check_runtimes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="registered model names, or a library's own model as torchvision:NAME / timm:NAME")
    p.add_argument("--batch", type=positive_ints, default=[1, 8, 32], help="batch sizes, e.g. 1,8,32 (default)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--mode", choices=("infer", "train"), default="infer",
                   help="infer: forward only; train: forward + backward + SGD step")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (all contenders)")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast dtype (all contenders)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every contender (inference: with inductor freezing)")
    p.add_argument("--fused", action="store_true",
                   help="the MODELS in inference form (infer only; not the --vs references): BatchNorm folded into "
                        "convs; on CPU the whole model compiled by oneDNN Graph on its first call, each conv fused "
                        "with its activation / residual add (archlab.deploy.onednn_graph, archlab.deploy.onednn)")
    p.add_argument("--vs", default=None, metavar="SOURCES",
                   help="also time the reference of the same architecture: torchvision, timm or torchvision,timm")
    p.add_argument("--input", type=positive_int, default=None, metavar="N",
                   help="input N x N (default: the card's; 224 for a library's model)")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed steps per contender (default 20)")
    p.add_argument("--warmup", type=nonneg_int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw images/s per implementation (against batch size when several are timed)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--runtime", type=_names, default=None, metavar="RUNTIMES",
                   help="time the same model and weights in deployment runtimes instead: a comma-separated list of "
                        f"{', '.join(RUNTIMES)}; each in its own process, alternated; each row's outputs compared "
                        "with fp32 eager's (ONNX Runtime and OpenVINO: pip install -e \".[deploy]\")")
    p.add_argument("--precision", type=_names, default=None, metavar="fp32|bf16",
                   help="inference arithmetic: fp32 (default) or bf16 (weights and activations in bfloat16; on CPU "
                        "only where it has AVX-512 BF16 or AMX); with --runtime, a list: fp32,bf16")
    p.add_argument("--same-process", action="store_true",
                   help="with --runtime: time every runtime in this process, ONNX Runtime's thread spinning off "
                        "(faster to start, less fair to ONNX Runtime and OpenVINO)")


def _names(text: str) -> list[str]:
    """'a,b' -> ['a', 'b'] (checked against what each flag knows in _check_args, for one-line messages)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def external(name: str) -> bool:
    """'torchvision:NAME' / 'timm:NAME': a reference library's own model, timed as it is (no --vs)."""
    return name.split(":", 1)[0] in SOURCES and ":" in name


def _check_external(name: str) -> None:
    source, model = name.split(":", 1)
    if source == "torchvision":
        import torchvision

        known = model in torchvision.models.list_models()
    else:
        import timm

        known = timm.is_model(model)
    if not known:
        raise CLIError(f"unknown {source} model {model!r}")


def _check_args(args: argparse.Namespace) -> list[str]:
    import archlab

    for name in args.models:
        if external(name):
            _check_external(name)
            continue
        card = archlab.model_card(name)  # UnknownModelError (a ValueError): one line, exit 2
        size = card.input_size if args.input is None else args.input
        if size < card.min_input_size:
            raise CLIError(f"{name} needs --input >= {card.min_input_size}, got {size}")
    args.pairs = _check_runtime_args(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA GPU is available to PyTorch on this machine")
    from archlab.analysis.profile import check_fits

    for name in args.models:  # a size that cannot fit: refused now, not by the allocator after a long wait
        if external(name):  # a library's own model: its shapes, built on the meta device (no weights)
            with torch.device("meta"):
                reference = build_reference(name)
            check_fits(reference, args.input or 224, max(args.batch), args.mode, args.device)
        else:
            check_fits(name, args.input, max(args.batch), args.mode, args.device)
    if args.fused and args.mode == "train":
        raise CLIError("--fused is for --mode infer: a fused model has no BatchNorm left to train")
    sources = [s.strip() for s in args.vs.split(",") if s.strip()] if args.vs else []
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or (args.vs is not None and not sources):
        raise CLIError(f"--vs takes a comma-separated list of {', '.join(SOURCES)}; got {args.vs!r}")
    return sources


def _check_runtime_args(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """--runtime / --precision / --same-process against the other flags; the (runtime, precision) pairs to time
    (None without --runtime)."""
    precisions = args.precision or ["fp32"]
    for p in precisions:
        check_precision(p)
    if args.precision and args.mode == "train":
        raise CLIError("--precision is for --mode infer (an inference form); to train in bf16 use --amp bf16")
    if args.precision and args.amp:
        raise CLIError("--precision and --amp both set the arithmetic: give one")
    if args.runtime is None:
        if args.same_process:
            raise CLIError("--same-process applies to --runtime")
        if len(precisions) > 1:
            raise CLIError(f"--precision {','.join(precisions)}: several precisions are compared with --runtime")
        if precisions == ["bf16"] and args.device == "cpu":
            require_bf16()
        return None
    for flag, on in (("--vs", args.vs), ("--fused", args.fused), ("--compile", args.compile),
                     ("--channels-last", args.channels_last), ("--amp", args.amp),
                     ("--mode train", args.mode == "train")):
        if on:
            raise CLIError(f"--runtime times runtimes of one model for inference; {flag} does not apply (fused and "
                           "compile are runtimes, each in its own memory format)")
    return check_runtimes(args.runtime, precisions, args.device)


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def run(args: argparse.Namespace) -> int:
    import archlab
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    sources = _check_args(args)
    plot = plot_path(args.plot)
    if args.pairs is not None:
        return _run_runtimes(args, plot)
    settings = Settings(device=args.device, mode=args.mode, amp=args.amp, compile=args.compile,
                        input_size=args.input, repeats=args.repeats, warmup=args.warmup,
                        precision=(args.precision or ["fp32"])[0])
    plan, notes = [], []
    for name in args.models:
        refs = []
        for source in [] if external(name) else sources:
            ref = reference_for(name, source)
            if ref is None:
                notes.append(f"{name}: no {source} model of the same architecture; not compared")
            else:
                refs.append(ref)
        if external(name):
            if sources:
                notes.append(f"{name} is a reference implementation itself: timed alone")
            size = args.input or 224
        else:
            size = archlab.model_card(name).input_size if args.input is None else args.input
        for batch in args.batch:
            plan.append((name, refs, batch, size))
    total = sum((1 + len(refs)) * (args.warmup + args.repeats) for _, refs, _, _ in plan)
    rows: list[dict[str, Any]] = []
    # Progress on stderr, so that --json output on stdout stays clean.
    progress = transient_progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn())
    with progress:
        task = progress.add_task("bench", total=total)
        for name, refs, batch, size in plan:
            progress.update(task, description=f"{name} batch {batch}")
            # Ours holds the (first) reference's weights: the same function on the same numbers.
            if external(name):  # the library's model as it is (fused too with --fused: fuse() takes any model)
                contenders = [Contender(name, lambda n=name: build_reference(n), args.channels_last, args.fused,
                                        is_ours=True)]
            else:
                contenders = [Contender("ours", lambda n=name, r=(refs or [None])[0]: build_ours(n, r),
                                        args.channels_last, args.fused, is_ours=True)]
            contenders += [Contender(r, lambda r=r: build_reference(r), args.channels_last) for r in refs]
            try:
                bench_row(contenders, batch, settings, size, on_step=lambda: progress.advance(task))
            except torch.OutOfMemoryError:
                raise CLIError(f"{name} at batch {batch}: out of memory on {args.device}") from None
            except RuntimeError as exc:  # e.g. torch.compile without a C++ compiler
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise CLIError(f"{name} at batch {batch}: {first}") from exc
            ours = summarize(contenders[0], batch)
            for c in contenders:
                row = dict(model=name, input=size, **summarize(c, batch))
                # ours/theirs speed: > 1 means ours is faster.
                row["ours_over_theirs"] = None if c.is_ours else row["median_ms"] / ours["median_ms"]
                rows.append(row)
    meta = dict(device=args.device, mode=args.mode, amp=args.amp, precision=settings.precision, compile=args.compile,
                channels_last=args.channels_last, fused=args.fused,
                onednn=args.fused and args.device == "cpu",  # fused form with oneDNN conv+activation/add primitives
                threads=torch.get_num_threads(),
                torch=torch.__version__, repeats=args.repeats, warmup=args.warmup)
    if plot is not None:
        from archlab.plots import plot_bench

        draw_plot(lambda r, p: plot_bench(r, _title(meta), p), rows, plot)
    if args.json:
        print_json(dict(settings=meta, rows=rows, notes=notes))
        return 0
    _print_table(rows, meta, notes)
    if plot is not None:
        console().print(f"plot written to {plot}")
    return 0


def _input_size(name: str, args: argparse.Namespace) -> int:
    import archlab

    if args.input is not None:
        return args.input
    return 224 if external(name) else archlab.model_card(name).input_size


def _run_runtimes(args: argparse.Namespace, plot: Any) -> int:
    """--runtime: each model and batch timed in every (runtime, precision) pair, rows rendered."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from archlab.deploy.timing import bench_runtimes, trained_like_norms

    rows: list[dict[str, Any]] = []
    timing = ""
    progress = transient_progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn())
    with progress:
        task = progress.add_task("bench", total=len(args.models) * len(args.batch) * len(args.pairs) * args.repeats)
        for name in args.models:
            size = _input_size(name, args)
            for batch in args.batch:
                progress.update(task, description=f"{name} batch {batch}: building {len(args.pairs)} runtime(s)")
                try:
                    run = bench_runtimes(name, args.pairs, batch, size, repeats=args.repeats, warmup=args.warmup,
                                         device=args.device, isolate=not args.same_process,
                                         on_block=lambda n: progress.advance(task, n), weights=trained_like_norms)
                except RuntimeError as exc:  # a runtime that cannot build or run this model: which, one line
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise CLIError(f"{name} at batch {batch}: {first}") from exc
                rows += run.rows
                timing = run.timing
    meta = dict(device=args.device, mode="infer", runtimes=[f"{r} {p}" for r, p in args.pairs],
                threads=torch.get_num_threads(), torch=torch.__version__, repeats=args.repeats, warmup=args.warmup,
                timing=timing)
    title = f"runtimes on {args.device} ({meta['threads']} thread(s))"
    if plot is not None:
        from archlab.plots import plot_bench

        draw_plot(lambda r, p: plot_bench(r, title, p), rows, plot)
    if args.json:
        print_json(dict(settings=meta, rows=rows, notes=[]))
        return 0
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for col in ("model", "runtime", "precision", "input", "batch", "median ms", "IQR ms", "img/s", "x eager",
                "max |diff|", "top-1 = eager", "outputs"):
        table.add_column(col, justify="left" if col in ("model", "runtime", "precision", "outputs") else "right")
    for r in rows:
        ratio = r["speed_vs_eager"]
        table.add_row(r["model"], r["runtime"], r["precision"], str(r["input"]), str(r["batch"]),
                      f"{r['median_ms']:.2f}", f"{r['iqr_ms']:.2f}", f"{r['images_per_s']:.1f}",
                      "-" if ratio is None else f"{ratio:.2f}x", f"{r['max_abs_diff']:.1e}",
                      f"{r['top1_agree']:.0%}", "agree" if r["agrees"] else "[red]DIFFER[/]")
    c = console()
    c.print(table)
    c.print(f"timed: {timing}.")
    c.print("max |diff|: largest difference of its outputs from fp32 eager PyTorch's on the same input (outputs up "
            f"to {max(r['output_scale'] for r in rows):.2e}); DIFFER beyond 1e-4 of that scale in fp32, 5e-2 in bf16. "
            "x eager: images/s over fp32 eager's, same run. Weights: random, the same in every runtime, with "
            "BatchNorm statistics drawn as a trained network's (archlab.deploy.timing.trained_like_norms), so "
            "activations keep their scale through the layers (with BatchNorm's initial statistics a MobileNet's "
            "logits are ~1e-10).")
    for pair, detail in dict.fromkeys((r["impl"], r["detail"]) for r in rows):
        c.print(f"{pair}: {detail}")
    return 0


def _title(meta: dict[str, Any]) -> str:
    fused = "fused (ours only" + ("; oneDNN Graph, conv+activation/add" if meta["onednn"] else "") + ")"
    flags = [f for f, on in (("channels-last", meta["channels_last"]), (fused, meta["fused"]),
                             ("compile", meta["compile"]), (meta["amp"], meta["amp"]),
                             ("bf16 weights and activations", meta.get("precision") == "bf16")) if on]
    return f"{meta['mode']} on {meta['device']} ({meta['threads']} thread(s)){', ' if flags else ''}{', '.join(flags)}"


def _print_table(rows: list[dict[str, Any]], meta: dict[str, Any], notes: list[str]) -> None:
    from rich.table import Table

    table = Table(title=_title(meta), header_style="bold")
    for col in ("model", "impl", "input", "batch", "median ms", "IQR ms", "min-max ms", "img/s", "peak mem",
                "ours/theirs"):
        table.add_column(col, justify="left" if col in ("model", "impl") else "right")
    for r in rows:
        ratio = r["ours_over_theirs"]
        table.add_row(r["model"], r["impl"], str(r["input"]), str(r["batch"]), f"{r['median_ms']:.2f}",
                      f"{r['iqr_ms']:.2f}", f"{r['min_ms']:.1f}-{r['max_ms']:.1f}", f"{r['images_per_s']:.1f}",
                      _fmt_bytes(r["peak_mem_bytes"]), "-" if ratio is None else f"{ratio:.2f}x")
    c = console()
    if not c.is_terminal:
        c.width = max(c.width, 160)  # piped to a file: don't squeeze the columns
    c.print(table)
    c.print("ours/theirs: our images/s over the reference's, same run, interleaved; > 1 means ours is faster. "
            "peak mem: " + ("CUDA peak during a step + weights" if meta["device"] == "cuda"
                            else "RSS rise during a step (activations; weights excluded)"))
    for note in notes:
        c.print(f"note: {note}")
