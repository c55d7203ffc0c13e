"""The command line: ``vdfast prepare | distill | eval | experts | preview | export | bench | info``.

Flags map one-to-one onto config fields (generated from the dataclasses, so a new field is a new
flag, and its help is the field's doc): ``--lr-img`` is ``DistillConfig.lr_img``, ``--net-width`` is
``NetConfig.width``, ``--eval-epochs`` is ``EvalConfig.epochs``; ``vdfast prepare``'s flags are
``PrepareConfig``'s fields. Unset flags take the preset's value. ``vdfast distill --config
RUN/config.json`` repeats a run from its saved config (flags given beside it override the file).
argparse lives here only; the library functions take explicit parameters. The library reports
through :mod:`logging` (loggers under ``vdfast``); :func:`configure_logging` prints those records
as the command's lines (``--debug``: DEBUG records too).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from vdfast.config import (PRESETS, SECTIONS, ConfigError, DistillConfig, NetConfig, PrepareConfig,
                           field_doc)

_SKIP = set(SECTIONS)


_PRESET_HELP = ("auto | " + " | ".join(PRESETS) + " (auto: builtin for the embedded dataset, else "
                "published; small: stores of 8 frames at 32x32, sized for a CPU)")


def _help(f: dataclasses.Field, default, preset: bool) -> str:
    shown = "none" if default is None else (f'"{default}"' if default == "" else default)
    note = "; a preset may change it" if preset else ""
    # argparse formats help with %: a literal % in a doc must be doubled
    return f"{field_doc(f)} (default: {shown}{note})".replace("%", "%%")


def _group(p: argparse.ArgumentParser, title: str, cls=None, prefix: str = ""):
    """An argument group of ``p`` titled ``title``, described by the first line of ``cls``'s doc
    (the config section its flags set) and the flags' prefix."""
    doc = " ".join((cls.__doc__ or "").split()).replace("``", "") if cls is not None else ""
    doc = doc.split(". ")[0].rstrip(".")  # the first sentence
    desc = f"--{prefix}*: {doc}" if prefix else doc
    return p.add_argument_group(title, desc.replace("%", "%%") or None)


def _add_fields(p, cls, prefix: str = "", skip=(), preset: bool = True):
    """One flag per field of ``cls`` (``--<prefix><field>``) on the parser or argument group ``p``,
    its help the field's doc. Unset flags are None (the preset's or the dataclass's value applies)."""
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in _SKIP or f.name in skip:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        dest = (prefix.replace("-", "_") + f.name) if prefix else f.name
        default = getattr(defaults, f.name)
        kw = dict(dest=dest, default=None, help=_help(f, default, preset))
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            p.add_argument(flag, type=f.metadata.get("cli_type", type(default)), **kw)


def _overrides(ns) -> dict:
    o = {}
    for f in dataclasses.fields(DistillConfig):
        if f.name not in _SKIP and hasattr(ns, f.name):
            o[f.name] = getattr(ns, f.name)
    for prefix, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            v = getattr(ns, f"{prefix}_{f.name}", None)
            if v is not None:
                o[f"{prefix}.{f.name}"] = v
    return {k: v for k, v in o.items() if v is not None}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``vdfast: error: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"vdfast: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vdfast", description="Fast video dataset distillation. Errors are one line; "
                "--debug (or VDFAST_DEBUG=1) shows the traceback too.")
    sub = p.add_subparsers(dest="cmd", required=True)

    pr = sub.add_parser("prepare", help="decode a dataset folder once into a ClipStore")
    pr.add_argument("source", help="dataset folder (UCF101, HMDB51, Kinetics, SSv2, frames, folder)")
    pr.add_argument("--out", required=True, help="store directory to write (resumable)")
    _add_fields(pr, PrepareConfig, preset=False)

    d = sub.add_parser("distill", help="distill a store (default: the embedded dataset) and evaluate",
                       description="Distill a store and evaluate the synset. The flags are grouped "
                                   "by config section (DistillConfig and its sections in "
                                   "vdfast.config); a section's flags are --<section>-<field>.",
                       usage="%(prog)s [--data STORE] [--method METHOD] [--ipc K] [--out DIR] "
                             "[options, grouped below]")
    r = d.add_argument_group("run", "data, output directory, repeating a run, what happens after it")
    r.add_argument("--data", default=None, help="store directory, or `builtin` (default: builtin)")
    r.add_argument("--out", default=None, help="run directory (default runs/<data>-<method>-ipc<k>)")
    r.add_argument("--config", default=None, metavar="FILE",
                   help="repeat a run: start from its saved config.json (its preset and data too, "
                        "unless --preset / --data are given); flags given here override the file")
    r.add_argument("--preset", default=None, help=_PRESET_HELP)
    r.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT/checkpoint when present")
    r.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                   help="train fresh students afterwards and print the accuracy table")
    r.add_argument("--preview", action=argparse.BooleanOptionalAction, default=True,
                   help="write preview.gif / preview.png of the distilled videos")
    _add_fields(d.add_argument_group("distill", "the method, its budget and optimiser, DM's options "
                                     "(DistillConfig's own fields)"), DistillConfig)
    for name, cls in SECTIONS.items():
        _add_fields(_group(d, name, cls, name + "-"), cls, name + "-")

    e = sub.add_parser("eval", help="evaluate a saved synset on a store's test split")
    e.add_argument("synset", help="synset directory (RUN/synset)")
    e.add_argument("--data", default="builtin")
    e.add_argument("--out", default=None, help="write metrics.json here")
    e.add_argument("--preset", default="auto", help=_PRESET_HELP)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    _add_fields(_group(e, "net", NetConfig, "net-"), NetConfig, "net-")
    _add_fields(_group(e, "eval", SECTIONS["eval"], "eval-"), SECTIONS["eval"], "eval-")

    x = sub.add_parser("experts", help="train MTT expert trajectories (a buffer) on a store")
    x.add_argument("--data", default="builtin")
    x.add_argument("--out", required=True, help="buffer directory (resumable)")
    x.add_argument("--preset", default="auto", help=_PRESET_HELP)
    x.add_argument("--device", default="auto")
    _add_fields(_group(x, "net", NetConfig, "net-"), NetConfig, "net-")
    _add_fields(_group(x, "mtt", SECTIONS["mtt"], "mtt-"), SECTIONS["mtt"], "mtt-")

    v = sub.add_parser("preview", help="write a GIF and a PNG grid of a synset's videos")
    v.add_argument("synset")
    v.add_argument("--out", default=None, help="directory (default: beside the synset)")
    v.add_argument("--max-videos", type=int, default=64)

    xp = sub.add_parser("export", help="write a synset's videos as mp4 files in a Hugging Face VideoFolder "
                                       "tree (DIR/train/<class>/*.mp4 + metadata.jsonl)")
    xp.add_argument("synset", help="synset directory (RUN/synset)")
    xp.add_argument("dir", help="output folder (new or empty)")
    xp.add_argument("--format", default="mp4", help="file format: mp4 (default: mp4)")
    xp.add_argument("--fps", type=int, default=8, help="frame rate written into the files (default: 8)")
    xp.add_argument("--crf", type=int, default=17,
                    help="quality, lower is better (libx264's CRF; mapped onto mpeg4's quantiser) "
                         "(default: 17)")
    xp.add_argument("--pix-fmt", default="yuv420p",
                    help="yuv420p (plays everywhere) | yuv444p (full colour resolution, libx264) "
                         "(default: yuv420p)")

    b = sub.add_parser("bench", help="run the bundled benchmarks (from a source checkout)")
    b.add_argument("args", nargs="*", help="passed to benchmarks/run.py (--smoke, --only ops,dm,s2d-dm,mtt,"
                        "s2d-mtt,gvd,decode,eval, --workloads, --json, --compare, --scaling, --plot; "
                        "see BENCHMARKS.md)")

    i = sub.add_parser("info", help="versions, devices and usable backends")
    i.add_argument("--json", action="store_true")
    return p


def _print_storage(synset):
    s = synset.storage()
    print(f"storage: {s['bytes'] / 2**20:.2f} MiB stored for {s['videos']} videos "
          f"({100 * s['ratio_vs_fp32_videos']:.0f}% of fp32 videos, "
          f"{s['video_bytes_uint8'] / 2**20:.2f} MiB as uint8 videos)"
          + (f"; soft labels {_size(s['soft_label_bytes'])} besides" if s.get("soft_label_bytes") else ""))


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _evaluate_run(res, store, out, args):
    """The evaluation of a distillation run, with the run's own settings."""
    import vdfast

    ev = res.config.eval
    return vdfast.evaluate(res.synset, store, out=out, seed=res.config.seed,
                           device=res.config.device, preset=args.preset,
                           net=dataclasses.asdict(res.config.net),
                           **{f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)})


def _bench(rest) -> int:
    import runpy

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    if not script.exists():
        print(f"vdfast bench runs the benchmarks of a source checkout; {script} not found. "
              f"Clone the repository and install it with `make install`.", file=sys.stderr)
        return 2
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _user_errors() -> tuple:
    """vdfast's own errors: printed as one line, without a traceback."""
    from vdfast.config import ConfigError
    from vdfast.data.decode import DecodeError
    from vdfast.data.layouts import LayoutError
    from vdfast.data.store import StoreError
    from vdfast.engine.checkpoint import CheckpointError, DiskFullError, OutDirError, RunLockedError
    from vdfast.videofolder import ExportError
    from vdfast.methods.experts import BufferError
    from vdfast.methods.static import StaticMemoryError
    from vdfast.ops.dispatch import BackendUnavailable
    from vdfast.synsets import SynsetError

    return (ConfigError, StoreError, LayoutError, DecodeError, SynsetError, BufferError,
            StaticMemoryError, CheckpointError, DiskFullError, OutDirError, RunLockedError,
            BackendUnavailable, ExportError, FloatingPointError)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class _Print(logging.Handler):
    """vdfast's log records as the command's lines on stdout (``sys.stdout`` looked up at each
    record, so a redirected stdout is followed); warnings and errors prefixed ``warning:``."""

    def emit(self, record):
        try:
            msg = self.format(record)
        except Exception:
            self.handleError(record)
            return
        line = ("warning: " if record.levelno >= logging.WARNING else "") + msg
        try:
            print(line, flush=True)
        except UnicodeEncodeError:  # a file name that is not UTF-8, or a strict ASCII stdout
            enc = getattr(sys.stdout, "encoding", None) or "utf-8"
            print(line.encode(enc, "backslashreplace").decode(enc), flush=True)


def configure_logging(debug: bool = False) -> None:
    """Print the ``vdfast`` loggers' INFO records (DEBUG with ``debug``); idempotent."""
    root = logging.getLogger("vdfast")
    if not any(isinstance(h, _Print) for h in root.handlers):
        root.addHandler(_Print())
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def main(argv=None) -> int:
    """The ``vdfast`` command. Errors print one line ``vdfast: error: ...`` and return non-zero
    (2: a bad option, 1: anything else); ``--debug`` anywhere (or ``VDFAST_DEBUG=1``) re-raises
    them with the traceback. SIGINT / SIGTERM during a distillation save a checkpoint at the next
    iteration and return 130 / 143."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to benchmarks/run.py
        return _bench(argv[1:])
    debug = "--debug" in argv or os.environ.get("VDFAST_DEBUG", "0") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    configure_logging(debug)
    from vdfast import distributed
    from vdfast.engine.checkpoint import Interrupted

    failed = None  # this process's error line, for the other processes of an N-process run
    try:
        rc = _run(args)
    except Interrupted as e:  # every process stops at the same iteration: they leave together
        if debug:
            raise
        print(e.message(), file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        failed = "interrupted"
        if debug:
            raise
        print("vdfast: interrupted; the last checkpoint, if one was written, is kept: run the same "
              "command again to resume", file=sys.stderr, flush=True)
        return 130
    except Exception as e:
        failed = _describe(e)
        if debug:
            raise
        if not isinstance(e, _user_errors()):  # a collective ended by another process's failure
            peer = distributed.peer_failure()
            if peer:
                failed = f"{peer}; this process stopped with it"
        print(f"vdfast: error: {failed}", file=sys.stderr, flush=True)
        from vdfast.config import ConfigError

        return 2 if isinstance(e, ConfigError) else 1
    finally:
        # N processes: leave the group together after success, at once after a failure
        distributed.shutdown(error=failed)
    return rc


def _describe(e: Exception) -> str:
    """One line for an error: vdfast's own as they are; a full disk, an unreadable or unwritable
    path named; anything else (a bug) with its type and where to get the traceback."""
    from vdfast.engine.checkpoint import is_disk_full

    if isinstance(e, _user_errors()):
        return _one_line(e)
    if is_disk_full(e):
        where = getattr(e, "filename", None) or "the output directory"
        return f"disk full at {where}; free some space, then run the same command again"
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or _one_line(e)}"
    if isinstance(e, (ValueError, RuntimeError)):  # raised by vdfast with a message that says what to do
        return f"{_one_line(e)} (--debug for the traceback)"
    return (f"{type(e).__name__}: {_one_line(e)} (an internal error: --debug shows the traceback; "
            f"please report it)")


def _short(d: dict) -> str:
    return ", ".join(f"{k} {d.get(k)}" for k in ("name", "classes", "frames", "size", "train", "test"))


def _saved_run(path) -> dict:
    """A run's saved ``config.json`` as ``preset``, ``data`` (``builtin``, or the prepared store's
    recorded path), ``store`` (the store's saved description) and ``options`` (the config's
    fields, as overrides). :class:`ConfigError` naming the first key that is not an option."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file (a run's config.json is OUT/config.json)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of config fields")
    out = {"preset": d.pop("preset", None), "options": {}}
    d.pop("vdfast", None)  # the version that wrote it
    data = d.pop("data", None)
    if isinstance(data, dict) and data.get("name") == "builtin":
        out["data"] = "builtin"
    elif isinstance(data, str):
        out["data"] = data
    elif isinstance(data, dict):
        out["store"] = data
        if data.get("path"):
            out["data"] = data["path"]
    fields = {f.name: f for f in dataclasses.fields(DistillConfig)}
    for k, v in d.items():
        if k not in fields:
            raise ConfigError(f"--config {path}: unknown key {k!r} (not a field of the distill config)")
        if k in SECTIONS:
            if not isinstance(v, dict):
                raise ConfigError(f"--config {path}: {k!r} must be an object of {k} fields")
            names = {f.name for f in dataclasses.fields(SECTIONS[k])}
            for kk in v:
                if kk not in names:
                    raise ConfigError(f"--config {path}: unknown key '{k}.{kk}' (not a field of the "
                                      f"{k} section)")
        out["options"][k] = v
    return out


def _check_not_past(out: Path, iterations: int) -> None:
    """A :class:`ConfigError` when ``out`` holds a checkpoint of a later iteration than
    ``iterations``: resuming it would label iteration N's synset with the smaller number."""
    for d in (out / "checkpoint", out / "checkpoint.prev"):  # the newest that has a manifest
        try:
            done = int(json.loads((d / "manifest.json").read_text())["iteration"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if done > iterations:
            raise ConfigError(f"{out} holds a run checkpointed at iteration {done}, past --iterations "
                              f"{iterations} (its synset is iteration {done}'s); pass --iterations "
                              f"{done} or more to use or continue it, --no-resume to start over, or "
                              f"another --out")
        return


def _run(args) -> int:
    import vdfast

    if args.cmd == "info":
        from vdfast.info import format_info, info

        d = info()
        print(json.dumps(d, indent=1) if args.json else format_info(d))
        return 0
    if args.cmd == "prepare":
        from vdfast.data.store import check_out

        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareConfig)}
        cfg = PrepareConfig(**{k: v for k, v in given.items() if v is not None})
        check_out(args.source, args.out)  # before the store's folder is created
        vdfast.prepare(args.source, args.out, cfg)
        return 0
    if args.cmd == "experts":
        from vdfast import distributed
        from vdfast.api import pick_device
        from vdfast.config import resolve
        from vdfast.methods.experts import train_experts

        store = vdfast.open_data(args.data)
        preset = args.preset if args.preset != "auto" else ("builtin" if store.name == "builtin" else "published")
        cfg = resolve(preset, **{k: v for k, v in _overrides(args).items() if k.startswith(("net.", "mtt."))})
        m = cfg.mtt
        dist = distributed.setup(pick_device(args.device))  # N processes: experts split across them
        paths = train_experts(store, args.out, num_experts=m.num_experts, epochs=m.buffer_epochs,
                              lr=m.buffer_lr, batch=m.buffer_batch, momentum=m.buffer_momentum,
                              net_cfg=cfg.net, seed=m.buffer_seed, device=dist.device,
                              progress=dist.main, shard=(dist.rank, dist.world))
        dist.barrier()
        if dist.main:
            print(f"{len(paths)} expert trajectories in {args.out}; use them with --mtt-buffer {args.out}")
        return 0
    if args.cmd == "preview":
        from vdfast.preview import preview

        syn = vdfast.load(args.synset)
        paths = preview(syn, args.out or Path(args.synset).parent, max_videos=args.max_videos)
        print(f"wrote {paths['gif']} and {paths['png']}")
        return 0
    if args.cmd == "export":
        r = vdfast.export(args.synset, args.dir, format=args.format, fps=args.fps, crf=args.crf,
                          pix_fmt=args.pix_fmt)
        print(f"wrote {r['videos']} videos ({r['codec']}, {r['pix_fmt']}) and {r['metadata']}; "
              f"load with datasets.load_dataset(\"videofolder\", data_dir={str(args.dir)!r})")
        return 0
    if args.cmd == "eval":
        if args.out is not None:  # before the evaluation, not after it
            from vdfast.engine.checkpoint import preflight

            preflight(args.out)
        o = _overrides(args)
        rep = vdfast.evaluate(args.synset, args.data, out=args.out, seed=args.seed, device=args.device,
                              preset=args.preset,
                              net={k.split(".", 1)[1]: v for k, v in o.items() if k.startswith("net.")},
                              **{k.split(".", 1)[1]: v for k, v in o.items() if k.startswith("eval.")})
        print(rep.table())
        return 0
    if args.cmd == "distill":
        from vdfast.config import resolve

        saved = _saved_run(args.config) if args.config else {}
        args.preset = args.preset or saved.get("preset") or "auto"
        st = saved.get("store")
        if args.data is None and st is not None:
            what = (f"the run distilled the store {st.get('name')!r} ({st.get('classes')} classes, "
                    f"{st.get('frames')} frames at {st.get('size')}px)")
            if "data" not in saved:
                raise ConfigError(f"--config {args.config}: {what}; config.json does not record "
                                  f"where it is: pass --data STORE")
            if not (Path(saved["data"]) / "store.json").exists():
                raise ConfigError(f"--config {args.config}: {what} at {saved['data']}, which holds "
                                  f"no store now: pass --data STORE")
        from_file = args.data is None and st is not None
        args.data = args.data or saved.get("data") or "builtin"
        o = {**saved.get("options", {}), **_overrides(args)}
        method, ipc = o.pop("method", "dm"), o.pop("ipc", 1)
        # the options checked before the data is read (a large store takes a while to open)
        cfg = resolve(args.preset if args.preset != "auto" else
                      ("builtin" if args.data == "builtin" else "published"), method=method, ipc=ipc, **o)
        store = vdfast.open_data(args.data)
        if from_file and {k: v for k, v in st.items() if k != "path"} != store.describe():
            raise ConfigError(f"--config {args.config}: the store at {args.data} is not the one the "
                              f"run distilled (then {_short(st)}, now {_short(store.describe())}); "
                              f"pass --data STORE")
        out = Path(args.out or f"runs/{store.name}-{method}-ipc{ipc}")
        if args.resume:
            _check_not_past(out, cfg.iterations)
        res = vdfast.distill(store, method=method, ipc=ipc, out=out, resume=args.resume,
                             preset=args.preset, **o)
        if res.rank != 0:  # other processes of a multi-process run: rank 0 reports
            if args.evaluate:  # ... but they train their share of the evaluation students
                _evaluate_run(res, store, out, args)
            return 0
        h = res.history
        spi = h.get("seconds_per_it") or [0]
        loop = (f"{h['iterations']} iterations, median {1e3 * sorted(spi)[len(spi) // 2]:.1f} ms/it, "
                f"peak memory {h.get('peak_memory_mb', 0):.0f} MiB ({h.get('memory_before_loop_mb', 0):.0f}"
                f" MiB before the loop)") if h.get("iterations") else (
            "0 iterations (the initialisation itself)" if h.get("iterative") else "not iterative")
        print(f"distilled {method} ipc {ipc} on {h['processes']} process(es): {loop} -> {out / 'synset'}")
        bank = ""
        if h.get("dm_bank"):  # DM's network bank (--dm-bank K)
            b = h["dm_bank"]
            bank = (f"dm bank: {b['networks']} networks, {b['bytes'] / 2**20:.1f} MiB {b['dtype']}, "
                    f"cache {b['cache']}, build {b['build_seconds']:.1f} s ({b['path'] or 'in memory'})")
            ho = b.get("heldout")
            if ho and ho["at_iteration"]:  # --dm-bank-heldout H: does the synset fit the bank only?
                bank += (f"; at iteration {ho['at_iteration'][-1]} the DM loss on {ho['networks']} "
                         f"held-out networks is {ho['heldout_loss'][-1]:.4g}, on the bank's "
                         f"{ho['bank_loss'][-1]:.4g} (at iteration 0: {ho['heldout_loss'][0]:.4g}, "
                         f"{ho['bank_loss'][0]:.4g})")
            print(bank)
        _print_storage(res.synset)
        if args.preview:
            from vdfast.preview import preview

            paths = preview(res.synset, out)
            print(f"preview: {paths['gif']}, {paths['png']}")
        if args.evaluate:
            rep = _evaluate_run(res, store, out, args)
            print()
            print(rep.table())
            (out / "report.md").write_text(rep.table() + "\n" + (f"\n{bank}\n" if bank else ""))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
