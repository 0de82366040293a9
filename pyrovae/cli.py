"""Command-line interface: ``pyrovae fit data.h5ad --prior gamma --latent-dim 10 --out result.h5ad``.

``pyrovae fit`` reads an ``.h5ad`` file, fits a :class:`pyrovae.VAE` to its raw counts (with a
progress bar), writes the latent means, the denoised values and the settings into a copy of the
AnnData (:func:`pyrovae.anndata_io.write_results`) and/or saves the model, and prints a summary.
With ``--mask-fraction`` and/or ``--thin`` it also runs the held-out experiments of
:mod:`pyrovae.evaluation` — each an *extra* fit with the same settings on the masked / thinned
data, so the written model is always the one fitted on all the data.

Outputs are written atomically (a temporary file in the destination folder, then a rename), so an
interrupted run never leaves a half-written file behind, and the output paths are checked before
any fitting starts. Mistakes in the input (a missing file, an unknown layer, a bad option value,
counts that are not counts) end with a one-line ``pyrovae: error: ...`` message and exit code 2;
a fit whose loss diverges ends with exit code 1.

With ``--backed`` the counts stay on disk (:class:`pyrovae.sources.BackedSource`: blocks of rows,
block-shuffled epochs) and the results are streamed into a copy of the input file
(:func:`pyrovae.anndata_io.stream_results`), so memory does not grow with cells × genes.
``--checkpoint DIR`` / ``--checkpoint-every N`` / ``--resume`` make a long fit resumable.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the command initializes the process
group (gloo on CPU, NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``); every rank fits and
evaluates, and only rank 0 prints and writes files.

torch, Pyro and anndata are imported only when a command runs, so ``pyrovae --help`` is quick.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "build_parser"]

PRIOR_CHOICES = ("poisson", "gamma", "nb", "zig", "zinb", "lognormal")


class UsageError(Exception):
    """A mistake in the user's input: reported in one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _open_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _half_open_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _hidden(text: str) -> tuple[int, ...]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        return tuple(_positive_int(p) for p in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer widths such as 128,128, got {text!r}"
        ) from None


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the uninformative None/False ones."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` instead of exiting."""

    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pyrovae`` command."""
    from . import __version__

    parser = _Parser(
        prog="pyrovae",
        description="Pyro variational autoencoders for single-cell count data.",
    )
    parser.add_argument("--version", action="version", version=f"pyrovae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    fit = sub.add_parser(
        "fit",
        help="fit a VAE to the counts of an .h5ad file",
        description="Fit a VAE to the raw counts of an .h5ad file; write latent means, denoised "
        "values and settings to --out and/or the model to --save.",
        formatter_class=_Formatter,
    )
    fit.add_argument("data", type=Path, help="input .h5ad file (cells × genes raw counts)")
    io = fit.add_argument_group("input and output")
    io.add_argument(
        "--layer",
        default=None,
        help="layer with the raw counts (default: layers['counts'] if present, else X)",
    )
    io.add_argument("--out", type=Path, help="output .h5ad: the input plus the results")
    io.add_argument("--save", type=Path, help="also save the fitted model (VAE.load reads it)")
    io.add_argument("--key", default="X_pyrovae", help="obsm key of the latent means")
    io.add_argument(
        "--denoised-layer",
        default="pyrovae_denoised",
        help="layer for the denoised values (dense cells × genes float32)",
    )
    io.add_argument(
        "--no-denoised",
        action="store_true",
        help="do not write the denoised layer (it is dense: 4 bytes per cell and gene)",
    )
    io.add_argument(
        "--backed",
        action="store_true",
        help="fit from disk: read the counts in blocks of rows, never the whole matrix (CSR or "
        "dense .h5ad); outputs are written into a copy of the input file block by block",
    )
    io.add_argument(
        "--block-size",
        type=_positive_int,
        default=1024,
        help="with --backed: rows per read and per shuffled block",
    )
    model = fit.add_argument_group("model")
    model.add_argument("--prior", default="gamma", choices=PRIOR_CHOICES, help="prior on u")
    model.add_argument("--prior-by-gene", action="store_true", help="one prior parameter per gene")
    model.add_argument("--latent-dim", type=_positive_int, default=10, help="latent dimension")
    model.add_argument(
        "--hidden",
        type=_hidden,
        default=(128, 128),
        help="encoder hidden widths, comma-separated (the decoder mirrors them)",
    )
    model.add_argument(
        "--size-factor",
        choices=("library", "none"),
        default="library",
        help="library: total counts / their median as a per-cell offset; none: no offset",
    )
    training = fit.add_argument_group("training")
    training.add_argument(
        "--objective",
        choices=("elbo", "iwae"),
        default="elbo",
        help="training objective: the ELBO or the importance-weighted bound",
    )
    training.add_argument("--epochs", type=_positive_int, default=100, help="maximum epochs")
    training.add_argument(
        "--batch-size", type=_positive_int, default=128, help="cells per minibatch"
    )
    training.add_argument("--lr", type=_positive_float, default=3e-3, help="learning rate")
    training.add_argument(
        "--n-samples", type=_positive_int, default=1, help="particles per cell in the objective"
    )
    training.add_argument("--seed", type=int, default=0, help="random seed")
    training.add_argument(
        "--validation-fraction",
        type=_half_open_fraction,
        default=0.0,
        help="fraction of cells held out to monitor the loss (and early-stop with --patience)",
    )
    training.add_argument(
        "--patience",
        type=_positive_int,
        default=None,
        help="stop after this many epochs without a better validation loss; keep the best",
    )
    training.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    training.add_argument(
        "--denoise-samples",
        type=_positive_int,
        default=100,
        help="posterior draws per cell for the denoised values",
    )
    training.add_argument("--quiet", action="store_true", help="no progress bar")
    ckpt = fit.add_argument_group("checkpoints")
    ckpt.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="DIR",
        help="save model, optimizer, random states and history to DIR during the fit "
        "(each write atomic)",
    )
    ckpt.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        metavar="N",
        help="epochs between checkpoints (default: the fit's own default)",
    )
    ckpt.add_argument(
        "--resume",
        action="store_true",
        help="continue the fit from the last checkpoint in --checkpoint DIR",
    )
    heldout = fit.add_argument_group("held-out evaluation (each runs an extra fit)")
    heldout.add_argument(
        "--mask-fraction",
        type=_open_fraction,
        default=None,
        help="hide this fraction of entries, refit, report the imputation score on them",
    )
    heldout.add_argument(
        "--thin",
        type=_open_fraction,
        default=None,
        metavar="FRACTION",
        help="binomial thinning: refit on this fraction of the molecules, score the rest",
    )
    heldout.add_argument(
        "--nmf-rank",
        type=int,
        default=0,
        help="also score a Poisson NMF of this rank (0: no baseline; NMF densifies the data)",
    )
    return parser


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_output(path: Path | None, what: str) -> None:
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{what} folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{what} folder {parent} is not writable")


@contextlib.contextmanager
def _atomic_path(path: Path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_check(path: Path) -> None:
    """The checks of :func:`_read` for a file that is read later, block by block."""
    try:
        import h5py
    except ImportError:
        raise UsageError(
            "reading .h5ad files needs anndata and h5py: pip install 'pyrovae[anndata]'"
        ) from None
    if not path.is_file():
        raise UsageError(f"input file {path} does not exist")
    if not h5py.is_hdf5(path):
        raise UsageError(f"cannot read {path} as .h5ad: not an HDF5 file")


def _read(path: Path):
    try:
        import anndata
    except ImportError:
        raise UsageError(
            "reading .h5ad files needs anndata: pip install 'pyrovae[anndata]'"
        ) from None
    if not path.is_file():
        raise UsageError(f"input file {path} does not exist")
    try:
        return anndata.read_h5ad(path)
    except Exception as err:  # h5py/anndata raise many types for unreadable files
        raise UsageError(f"cannot read {path} as .h5ad: {err}") from None


def _rank() -> int:
    """This process's rank: the initialized process group's, else ``$RANK`` (torchrun), else 0."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", "0"))


def _is_main() -> bool:
    """Whether this process prints and writes files (rank 0)."""
    return _rank() == 0


def _say(args, message: str) -> None:
    """Progress message on stderr (next to the progress bars), unless ``--quiet`` (rank 0 only)."""
    if not args.quiet and _is_main():
        print(f"pyrovae: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _process_group(args):
    """Under torchrun (``WORLD_SIZE`` > 1) initialize the default process group for the command
    (gloo, or NCCL with each rank on ``cuda:LOCAL_RANK`` for a CUDA ``--device``;
    :func:`pyrovae.distributed.process_group`) and destroy it afterwards; otherwise, or when one
    is initialized already, do nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    import torch

    from . import distributed

    backend = "gloo"
    if args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available")
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        backend = "nccl"
    with distributed.process_group(backend):
        yield


def _fmt(value: float | None, digits: int = 5) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _score_lines(name: str, result: dict, column: str) -> list[str]:
    lines = []
    for method, row in result["scores"].iterrows():
        lines.append(f"  {name:<18}{method:<13}{row[column]:.4f} per entry")
    return lines


# --------------------------------------------------------------------------------------------
# the fit command
# --------------------------------------------------------------------------------------------


def _check_args(args) -> None:
    if args.out is None and args.save is None:
        raise UsageError("nothing would be saved: give --out result.h5ad and/or --save model.pt")
    if args.patience is not None and args.validation_fraction == 0:
        raise UsageError("--patience needs --validation-fraction > 0")
    if args.nmf_rank < 0:
        raise UsageError(f"--nmf-rank must be >= 0, got {args.nmf_rank}")
    if args.nmf_rank and args.mask_fraction is None and args.thin is None:
        raise UsageError("--nmf-rank needs --mask-fraction or --thin")
    if args.backed and (args.mask_fraction is not None or args.thin is not None):
        raise UsageError(
            "--mask-fraction and --thin need the counts in memory; drop --backed to run them"
        )
    if args.resume and args.checkpoint is None:
        raise UsageError("--resume needs --checkpoint DIR")
    if args.checkpoint_every is not None and args.checkpoint is None:
        raise UsageError("--checkpoint-every needs --checkpoint DIR")
    if args.checkpoint is not None and args.checkpoint.exists() and not args.checkpoint.is_dir():
        raise UsageError(f"--checkpoint {args.checkpoint} is not a directory")
    if args.out is not None and args.out.resolve() == args.data.resolve():
        raise UsageError("--out must differ from the input file")
    if args.out is not None and args.save is not None and args.out.resolve() == args.save.resolve():
        raise UsageError("--out and --save must be different files")
    if args.hidden == ():
        raise UsageError("--hidden needs at least one layer width")
    _check_output(args.out, "--out")
    _check_output(args.save, "--save")


def _checkpoint_kwargs(args) -> dict:
    """``checkpoint_dir`` / ``checkpoint_every`` / ``resume`` for ``VAE.fit`` when asked for."""
    if args.checkpoint is None:
        return {}
    wanted = {"checkpoint_dir": args.checkpoint, "resume": args.resume}
    if args.checkpoint_every is not None:
        wanted["checkpoint_every"] = args.checkpoint_every
    return wanted


def _gb(n_values: int) -> str:
    return f"{4 * n_values / 1e9:.2g} GB"


def _open_counts(args):
    """The counts named by ``args``: ``(counts, adata or None, source name, non-zeros)``; a
    :class:`~pyrovae.sources.BackedSource` with ``--backed``, else the matrix of the AnnData."""
    import numpy as np
    import scipy.sparse as sp

    from .data import matrix_of

    adata = None
    if args.backed:
        from .sources import BackedSource

        _read_check(args.data)
        try:
            counts = BackedSource(args.data, args.layer, block_size=args.block_size)
        except ValueError as err:
            raise UsageError(str(err)) from None
        source = counts.layer or "X"
        nnz = counts.nnz
    else:
        adata = _read(args.data)
        try:
            counts = matrix_of(adata, args.layer)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if counts is None:
            raise UsageError(f"{args.data} has no X matrix; name the counts layer with --layer")
        source = args.layer or ("counts" if "counts" in adata.layers else "X")
        nnz = counts.nnz if sp.issparse(counts) else int(np.count_nonzero(counts))
    return counts, adata, source, nnz


def _summary(args, est, shape, nnz, source, lines) -> list[str]:
    """The fit summary printed at the end of ``pyrovae fit`` (without the wall time)."""
    from . import __version__

    n, p = shape
    history = est.history_
    loss = history.loss[-1]
    summary = [
        "",
        f"pyrovae {__version__} fit summary",
        f"  data              {args.data} [{source}]: {n} cells × {p} genes, "
        f"{100 * nnz / (n * p):.1f}% non-zero" + (", read from disk" if args.backed else ""),
        f"  model             prior {args.prior}, latent_dim {args.latent_dim}, "
        f"hidden {list(args.hidden)}, size factor {args.size_factor}",
        f"  training          {args.objective}, {args.n_samples} particle(s), "
        f"batch {args.batch_size}, lr {args.lr:g}, device {args.device}",
        f"  epochs run        {len(history.loss)} of {args.epochs}"
        + (
            f" (stopped early; best epoch {history.best_epoch} restored)"
            if history.stopped_early
            else ""
        ),
        f"  final loss        {_fmt(loss)} ({_fmt(loss / _n_train(est, n))} per training cell)",
    ]
    if history.val_loss:
        best = min(history.val_loss)
        summary.append(f"  best val. loss    {_fmt(best)} (epoch {history.best_epoch})")
    summary += lines
    if args.out is not None:
        written = [f"obsm[{args.key!r}]"]
        if not args.no_denoised:
            written.append(f"layers[{args.denoised_layer!r}]")
        written.append("uns['pyrovae']")
        summary.append(f"  wrote             {args.out}: {', '.join(written)}")
    if args.save is not None:
        summary.append(f"  saved model       {args.save}")
    if args.checkpoint is not None:
        summary.append(f"  checkpoints       {args.checkpoint}")
    return summary


def _fit(args) -> int:
    start = time.perf_counter()
    _check_args(args)
    main_rank = _is_main()

    from . import VAE, FitDivergedError
    from .anndata_io import results_uns, stream_results, write_results
    from .build import resolve_device

    try:
        resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    counts, adata, source, nnz = _open_counts(args)
    n, p = counts.shape

    def make():
        return VAE(
            prior=args.prior,
            latent_dim=args.latent_dim,
            prior_by_gene=args.prior_by_gene,
            hidden=args.hidden,
            device=args.device,
        )

    fit_kwargs = dict(
        size_factor=None if args.size_factor == "none" else "library",
        lr=args.lr,
        max_epochs=args.epochs,
        n_samples=args.n_samples,
        objective=args.objective,
        batch_size=args.batch_size,
        validation_fraction=args.validation_fraction,
        patience=args.patience,
        seed=args.seed,
        verbose=not args.quiet and main_rank,
    )
    est = make()
    checkpointing = _checkpoint_kwargs(args)
    mode = " (backed: read from disk in blocks)" if args.backed else ""
    _say(args, f"main fit: {n} cells × {p} genes from {args.data} [{source}]{mode}")
    t_fit = time.perf_counter()
    try:
        est.fit(counts, **fit_kwargs, **checkpointing)
    except FitDivergedError as err:
        if main_rank:
            print(f"pyrovae: fit failed: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as err:  # invalid counts or settings
        raise UsageError(f"--backed: {err}" if args.backed else str(err)) from None
    t_fit = time.perf_counter() - t_fit
    if args.save is not None and main_rank:
        with _atomic_path(args.save) as tmp:
            est.save(tmp)

    heldout: dict = {}
    lines: list[str] = []
    status = 0
    denoised_layer = None if args.no_denoised else args.denoised_layer
    try:
        try:
            if not args.backed:
                lines += _heldout(args, make, counts, fit_kwargs, heldout)
        except FitDivergedError as err:
            if main_rank:
                print(f"pyrovae: held-out fit failed: {err}", file=sys.stderr)
            status = 1
        except ValueError as err:  # e.g. a cell left without counts by thinning
            raise UsageError(f"held-out evaluation: {err}") from None
    finally:  # the main fit is written even if an evaluation fails or is interrupted
        if args.out is not None and args.backed:
            _write_backed(args, est, counts, denoised_layer, results_uns, stream_results)
        elif args.out is not None:
            write_results(
                est,
                adata,
                layer=args.layer,
                key=args.key,
                denoised_layer=denoised_layer,
                n_samples=args.denoise_samples,
                extra_uns={"heldout": heldout} if heldout else None,
            )
            if main_rank:
                with _atomic_path(args.out) as tmp:
                    adata.write_h5ad(tmp)
    if not main_rank:
        return status

    summary = _summary(args, est, (n, p), nnz, source, lines)
    summary.append(
        f"  wall time         {time.perf_counter() - start:.1f} s (main fit {t_fit:.1f} s)"
    )
    print("\n".join(summary))
    return status


def _write_backed(args, est, source, denoised_layer, results_uns, stream_results) -> None:
    """Outputs of a ``--backed`` fit: latent means in memory, the denoised layer computed and
    written one block of rows at a time into a copy of the input file (rank 0 writes; the other
    ranks make the same evaluation calls, in case those are collective)."""
    import numpy as np

    n, p = source.shape
    if denoised_layer is None:
        _say(
            args,
            f"not writing the denoised layer (--no-denoised): it would be a dense {n} × {p} "
            f"float32 matrix of {_gb(n * p)}",
        )
    else:
        _say(
            args,
            f"writing the denoised layer in blocks of {args.block_size} cells "
            f"(dense float32 on disk: {_gb(n * p)})",
        )
    latent = est.latent(source)

    def denoise_rows(start, stop):
        rows = source.subset(np.arange(start, stop))
        return est.denoise(rows, n_samples=args.denoise_samples)

    if not _is_main():
        if denoised_layer is not None:
            for start in range(0, n, args.block_size):
                denoise_rows(start, min(start + args.block_size, n))
        return
    uns = results_uns(
        est, source.layer or "X", args.key, denoised_layer, args.denoise_samples, None
    )
    with _atomic_path(args.out) as tmp:
        stream_results(
            args.data,
            tmp,
            latent,
            None if denoised_layer is None else denoise_rows,
            n_genes=p,
            key=args.key,
            denoised_layer=denoised_layer,
            uns=uns,
            block_size=args.block_size,
        )


def _n_train(est, n: int) -> int:
    """Number of training cells (all cells minus the validation split)."""
    cells = est.validation_cells_
    return n if cells is None else n - len(cells)


def _heldout(args, make, counts, fit_kwargs, store: dict) -> list[str]:
    """Run the requested held-out experiments; fill ``store``; return summary lines."""
    from .evaluation import imputation_experiment, thinning_experiment

    lines = []
    common = dict(
        n_samples=args.denoise_samples,
        baseline=args.nmf_rank > 0,
        nmf_rank=args.nmf_rank or None,
    )
    if args.mask_fraction is not None:
        _say(args, f"imputation fit: {args.mask_fraction:g} of the entries hidden")
        res = imputation_experiment(
            make, counts, frac=args.mask_fraction, seed=args.seed, fit_kwargs=fit_kwargs, **common
        )
        store["imputation"] = {
            "mask_fraction": args.mask_fraction,
            "n_hidden": res["n_hidden"],
            "scores": res["scores"].to_dict(orient="index"),
        }
        lines.append(
            f"  imputation        {res['n_hidden']} hidden entries ({args.mask_fraction:g}); "
            "Poisson log pmf of the hidden entries:"
        )
        lines += _score_lines("", res, "mean")
    if args.thin is not None:
        _say(args, f"thinning fit: on {args.thin:g} of the molecules")
        res = thinning_experiment(
            make, counts, frac=args.thin, seed=args.seed, fit_kwargs=fit_kwargs, **common
        )
        store["thinning"] = {
            "frac": args.thin,
            "scores": res["scores"].to_dict(orient="index"),
        }
        lines.append(
            f"  thinning          fit on {args.thin:g} of the molecules; Poisson log pmf of "
            "the other part:"
        )
        lines += _score_lines("", res, "mean")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyrovae`` console script; returns the exit code."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help / --version
            return int(exit_.code or 0)
        if args.command == "fit":
            with _process_group(args):
                return _fit(args)
        raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover
    except UsageError as err:
        print(f"pyrovae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyrovae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
