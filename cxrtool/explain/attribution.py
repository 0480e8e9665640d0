"""User-facing explaining: :class:`Explainer` (tensors in, relevance out) and :func:`explain_files`.

One forward and one backward per batch: the LRP model returns the logits, targets are picked from
them, and the backward pass is seeded with each sample's own explained quantity: the target logit
(``logit``), or for a multiclass model the target's log-odds against the other classes
(``log-odds``, ``z_t - logsumexp(z_others)``: its gradient at the logits is a linear combination of
classifier rows, so the epsilon rule still conserves it).  What the composite conserves (see
docs/explain.md): the input relevance plus what the rules hand to biases (``bias_share``; under the
DenseNet canonizer only the classifier's bias is charged, batch-norm shifts never are, plus the
log-sum-exp's curvature for log-odds) equals the explained value, whatever its sign.  Gradient x
input is seeded with the quantity's gradient and sums to it minus what biases and non-linearities
take.  Several targets ("all") reuse the same forward graph.
"""

from __future__ import annotations

import copy
import csv
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn as nn

from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.explain.audit import AUDIT_COLUMNS, audit_heatmap, summarize
from cxrtool.explain.composites import (
    DEFAULT_COMPOSITE,
    Bounds,
    CompositeSpec,
    compile_lrp,
    get_composite,
    zennit_composite,
)
from cxrtool.explain.options import ExplainOptions
from cxrtool.fsutil import NAME_ERRORS, atomic_open, atomic_path
from cxrtool.locks import owned_output
from cxrtool.modelfile import ModelCard
from cxrtool.task import Task
from cxrtool.trust import Assessment, Trust

if TYPE_CHECKING:
    from cxrtool.trust.gate import HeaderVerdict

Target = int | None  # a class index, or None for the predicted class
QUANTITIES = ("logit", "log-odds")  # what a heatmap can explain (:class:`Explainer`'s ``quantity``)


class Explainer:
    """Relevance maps for a model under one composite; the model itself is never modified.

    Parameters
    ----------
    model:
        The classifier (a :class:`~cxrtool.models.densenet.DenseNetClassifier`, or any
        conv/ReLU/linear network without batch norms).
    composite:
        A name from :data:`~cxrtool.explain.composites.COMPOSITES` or a spec.
    bounds:
        ``(low, high)`` per input channel, from ``PreprocessCfg.input_bounds()``; needed by ZBox.
    device:
        Where the LRP forward and backward run (``cpu``, ``cuda``, ``cuda:N``): the explainer's
        copy of the model lives there, inputs are moved there and every result comes back on the CPU.
    quantity:
        What each map explains (:data:`QUANTITIES`): the target's ``logit``, or its ``log-odds``
        against the other classes (multiclass models: with every logit negative, the predicted
        class's logit map is all blue, its log-odds map shows what sets it apart from the others).
    """

    def __init__(
        self,
        model: nn.Module,
        composite: str | CompositeSpec = DEFAULT_COMPOSITE,
        bounds: Bounds | None = None,
        device: str | torch.device = "cpu",
        quantity: str = "logit",
    ):
        if quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {', '.join(QUANTITIES)}; got {quantity!r}")
        self.quantity = quantity
        self.spec = get_composite(composite) if isinstance(composite, str) else composite
        if self.spec.is_lrp:
            self.net = compile_lrp(model, self.spec, bounds)
        else:
            self.net = copy.deepcopy(model).eval()
            for p in self.net.parameters():
                p.requires_grad_(False)
        # channels-last: oneDNN's convolutions (and their transposes) skip the layout reorders they
        # do on every NCHW call; on the 2-core dev CPU forward and LRP both run ~1.6x faster
        self.device = torch.device(device)
        self.net.to(self.device, memory_format=torch.channels_last)
        self._taps = _FeatureTaps(self.net, model.feature_layout()) if hasattr(model, "feature_layout") else None

    def explain(
        self, x: torch.Tensor, targets: Sequence[Target | torch.Tensor] = (None,)
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(B, K)`` and one relevance tensor ``(B, C, H, W)`` per entry of ``targets``.

        Each entry is ``None`` (each sample's predicted class), a class index, or a ``(B,)``
        tensor of per-sample class indices.
        """
        result = self.attribute(x, targets)
        return result.logits, result.relevance

    def attribute(self, x: torch.Tensor, targets: Sequence[Target | torch.Tensor] = (None,)) -> Attribution:
        """Like :meth:`explain`, plus per target the ``(B,)`` explained value and the relevance handed to biases."""
        fmt = torch.channels_last if x.dim() == 4 else torch.preserve_format
        x = x.detach().to(self.device).clone(memory_format=fmt).requires_grad_(True)
        ledger = getattr(self.net, "bias_ledger", None)
        with torch.enable_grad():
            logits = self.net(x)
            features = self._taps.collect() if self._taps is not None else None
            out, biases, values = [], [], []
            z = logits.detach()
            for i, target in enumerate(targets):
                index = _target_index(target, logits).to(logits.device)
                value, slope = explained_quantity(z, index, self.quantity)
                # LRP seeds each logit with its share of the linear part sum_k slope_k z_k; the rest of the value
                # (log-odds: minus the entropy of the other classes' softmax, no pixel's doing) is booked as a bias
                seed = slope * z if self.spec.is_lrp else slope
                if ledger is not None:
                    ledger.reset()
                (grad,) = torch.autograd.grad(logits, x, seed, retain_graph=i < len(targets) - 1)
                out.append((grad if self.spec.is_lrp else grad * x.detach()).contiguous().cpu())
                total = ledger.total if ledger is not None else None
                if total is None:
                    total = torch.zeros_like(value)
                total = total + value - (slope * z).sum(1)
                if not self.spec.is_lrp:  # gradient x input books nothing: its gap is not a bias share
                    total = torch.full((len(index),), float("nan"))
                biases.append(total.cpu())
                values.append(value.cpu())
        return Attribution(logits.detach().cpu(), out, biases, features.cpu() if features is not None else None, values)


@dataclass
class Attribution:
    """Logits, one relevance map per target, per target the relevance booked to biases, the
    pooled features of ``forward_features`` (the OOD score's input) from the same forward pass, and
    per target the ``(B,)`` explained value (``relevance.sum + bias_share`` for a conservative composite)."""

    logits: torch.Tensor
    relevance: list[torch.Tensor]
    bias_share: list[torch.Tensor]
    features: torch.Tensor | None = None
    explained: list[torch.Tensor] = field(default_factory=list)


def explained_quantity(logits: torch.Tensor, index: torch.Tensor, quantity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(value (B,), slope (B, K))``: the explained quantity per sample and its gradient at the logits.

    ``logit``: ``z_t``, slope one-hot.  ``log-odds``: ``z_t - logsumexp(z_others)``, slope ``+1`` at the
    target and ``-softmax(z_others)_j`` at each other class; ``value - slope . z`` is minus the entropy of
    that softmax (0 for two classes), the part no linear seed can carry.
    """
    rows = torch.arange(len(index), device=logits.device)
    onehot = torch.zeros_like(logits)
    onehot[rows, index] = 1.0
    if quantity == "logit":
        return logits[rows, index], onehot
    if logits.shape[1] < 2:
        raise CxrError("log-odds against the other classes needs a model with at least two classes")
    others = logits.masked_fill(onehot.bool(), float("-inf"))
    return logits[rows, index] - torch.logsumexp(others, 1), onehot - torch.softmax(others, 1)


class _FeatureTaps:
    """Hooks that read ``forward_features``' pooled features off the explainer's own forward pass.

    ``layout`` is the model's :meth:`~cxrtool.models.densenet.DenseNetClassifier.feature_layout`:
    each transition's output, pooled, then the classifier's input.  The canonized copy computes the
    same values (to float rounding), so explain needs no second forward for the OOD score.
    """

    def __init__(self, net: nn.Module, layout: Sequence[tuple[str, int]]):
        self._seen: dict[str, torch.Tensor] = {}
        self._order = [name for name, _ in layout]
        for name in self._order[:-1]:
            net.features.get_submodule(name).register_forward_hook(self._pooled(name))
        net.classifier.register_forward_pre_hook(
            lambda _m, args: self._seen.__setitem__(self._order[-1], args[0].detach().flatten(1))
        )

    def _pooled(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object, out: torch.Tensor) -> None:
            self._seen[name] = out.detach().mean((2, 3))

        return hook

    def collect(self) -> torch.Tensor:
        """``(B, width)`` features of the last forward pass, in layout order."""
        features, self._seen = torch.cat([self._seen[name] for name in self._order], 1), {}
        return features


def _target_index(target: Target | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if target is None:
        return logits.detach().argmax(1)
    if isinstance(target, torch.Tensor):
        return target.to(torch.long)
    return torch.full((logits.shape[0],), int(target), dtype=torch.long)


def zennit_relevance(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    composite: str | CompositeSpec,
    bounds: Bounds | None = None,
) -> torch.Tensor:
    """Reference: the same relevance computed with stock zennit rules (slow; tests and benchmark)."""
    spec = get_composite(composite) if isinstance(composite, str) else composite
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = x.detach().clone().requires_grad_(True)
    with zennit_composite(net, spec, bounds).context(net) as modified, torch.enable_grad():
        logits = modified(x)
        seed = torch.zeros_like(logits)
        rows = torch.arange(len(targets))
        seed[rows, targets] = logits.detach()[rows, targets]
        (rel,) = torch.autograd.grad(logits, x, seed)
    return rel


# ----------------------------------------------------------------------------- files -> outputs

RESULT_COLUMNS = (
    "path",
    "target",
    "target_index",
    "target_logit",
    "target_prob",
    "predicted",
    "predicted_prob",
    "ood_score",
    "flag",
    "explained",
    "explained_value",
    "relevance_sum",
    "bias_share",
    *AUDIT_COLUMNS,
    "scale",
    "heatmap",
    "overlay",
    "panel",
    "error",
)


@dataclass
class ExplainReport:
    rows: list[dict[str, object]]
    summary: list[dict[str, object]]
    csv_path: Path
    shortcut: dict[str, object] = field(default_factory=dict)  # :func:`~cxrtool.trust.shortcut.shortcut_audit`

    @property
    def n_failed(self) -> int:
        return len({r["path"] for r in self.rows if r.get("error")})


def plan_inputs(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """``(file, output stem relative to the output folder)`` for every candidate input.

    Files found in a folder keep their sub-path (no name clashes between class folders); files
    given directly keep their name.
    """
    from cxrtool.inputs import iter_input_files

    plan, seen = [], set()
    for root in (Path(p) for p in paths):
        for f in iter_input_files([root]):
            stem = (f.relative_to(root) if root.is_dir() else Path(f.name)).with_suffix("")
            unique, n = stem, 1
            while unique in seen:  # same name from two places: keep both
                n += 1
                unique = stem.with_name(f"{stem.name}-{n}")
            seen.add(unique)
            plan.append((f, unique))
    return plan


class Films(Protocol):
    """Where a planned film's bytes come from: a local file read in place, or a DICOMweb instance fetched once.

    ``open(name)`` makes the film a local file for as long as its context is open (explain keeps it open
    until the film's outputs and ``after_film`` are done); ``header`` is the header gate's verdict.
    """

    def open(self, name: str) -> AbstractContextManager[Path]: ...

    def header(self, name: str, film: Path) -> HeaderVerdict | None: ...


class LocalFilms:
    """Files on disk: read in place, the header gate reads the file's own header."""

    def open(self, name: str) -> AbstractContextManager[Path]:
        return nullcontext(Path(name))

    def header(self, name: str, film: Path) -> HeaderVerdict | None:
        from cxrtool.trust.gate import header_verdict

        return header_verdict(film)


#: ``after_film(name, film, rows)``: called once per film while its local copy still exists (None: it never loaded)
AfterFilm = Callable[[str, "Path | None", list[dict[str, object]]], None]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _targets_for(option: str, class_names: Sequence[str]) -> list[Target]:
    if option == "predicted":
        return [None]
    if option == "all":
        return list(range(len(class_names)))
    if option in class_names:
        return [list(class_names).index(option)]
    raise CxrError(f"--target must be 'predicted', 'all' or one of {', '.join(class_names)}; got {option!r}")


def resolve_quantity(explained: str, task: Task) -> str:
    """The quantity an :class:`ExplainOptions` ``explained`` names for a model of this task.

    ``auto``: a multiclass class's log-odds against the others (what decides the arg-max); a multilabel
    class's own logit (its sigmoid's log-odds: the classes are independent, there is no "against the others").
    """
    if explained == "auto":
        return "logit" if task.multilabel else "log-odds"
    if explained == "log-odds" and task.multilabel:
        raise CxrError(
            "--explained log-odds needs a multiclass model: a multilabel class's log-odds is its logit (use 'logit')"
        )
    return explained


def explain_files(
    plan: Iterable[tuple[str | Path, Path]],
    model: nn.Module,
    card: ModelCard,
    out_dir: str | Path,
    options: ExplainOptions | None = None,
    on_file: Callable[[str, str | None], None] | None = None,
    trust: Trust | None = None,
    *,
    films: Films | None = None,
    after_film: AfterFilm | None = None,
) -> ExplainReport:
    """Explain every input of ``plan`` (from :func:`plan_inputs`): ``.npy`` relevance, overlay and
    panel PNGs per target, and ``explain.csv``.

    A file that cannot be read becomes an error row and the run goes on.  ``on_file(path, error)``
    is called once per input (for progress bars).  The folder is owned by this run while it
    works (:func:`cxrtool.locks.owned_output`): a second run on it refuses at once.
    Probabilities are calibrated and each row gets ``ood_score``/``flag`` through ``trust``
    (:func:`cxrtool.trust.load_trust` of the model file; default: the card's temperature only).
    ``report.shortcut`` holds the data-side shortcut audit over all readable films (:mod:`.shortcut`).

    ``plan`` is consumed one batch at a time (a lazy listing, e.g. a DICOMweb study, is never read
    ahead); ``films`` opens each planned name (default: local files); ``after_film`` gets each film's
    rows while its local copy is open (DICOM results made from the same copy), before ``on_file``.
    """
    with owned_output(out_dir):
        return _explain_files(
            plan,
            model,
            card,
            out_dir,
            options,
            on_file,
            trust or Trust.card_only(card),
            films or LocalFilms(),
            after_film,
        )


def _explain_files(
    plan: Iterable[tuple[str | Path, Path]],
    model: nn.Module,
    card: ModelCard,
    out_dir: str | Path,
    options: ExplainOptions | None,
    on_file: Callable[[str, str | None], None] | None,
    trust: Trust,
    films: Films,
    after_film: AfterFilm | None,
) -> ExplainReport:
    from cxrtool.preprocess import load_gray, normalize
    from cxrtool.trust.shortcut import shortcut_audit, thumbnail
    from cxrtool.trust.view import view_verdicts

    options = options or ExplainOptions()
    cfg = card.preprocess
    targets = _targets_for(options.target, card.class_names)
    quantity = resolve_quantity(options.explained, card.task)
    explainer = Explainer(model, options.composite, cfg.input_bounds(), device=options.device, quantity=quantity)
    thumbs: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    predicted_names: list[str] = []
    folders: list[str] = []
    own_maps: list[np.ndarray | None] = []
    out_dir = Path(out_dir)
    rows: list[dict[str, object]] = []
    jobs = iter(plan)
    while batch := list(islice(jobs, max(1, options.batch_size))):
        with ExitStack() as copies:  # each film's local copy (e.g. a fetched instance) lives until its film is done
            good: list[tuple[str, Path, Path, np.ndarray, ExitStack]] = []  # name, stem, local film, grey, its copy
            for planned, stem in batch:
                name = str(planned)
                held = copies.enter_context(ExitStack())
                try:
                    film = held.enter_context(films.open(name))
                    good.append((name, stem, film, load_gray(film, cfg), held))
                except ImageLoadError as exc:
                    held.close()
                    rows.append({"path": name, "error": exc.reason})
                    if after_film:
                        after_film(name, None, rows[-1:])
                    if on_file:
                        on_file(name, exc.reason)
            if not good:
                continue
            x = torch.from_numpy(np.stack([normalize(g[3], cfg) for g in good]))
            result = explainer.attribute(x, targets)
            logits = result.logits
            features = result.features.numpy() if result.features is not None else None
            if features is not None:  # the penultimate features, for the shortcut audit
                feats.append(features[:, -model.classifier.in_features :])
            headers = [films.header(name, film) for name, _, film, _, _ in good]
            verdicts = trust.assess(logits.numpy(), features, headers, view_verdicts(x.numpy()))
            probs = torch.from_numpy(np.stack([v.probs for v in verdicts]))
            predicted = logits.argmax(1)
            for _, stem, _, gray, _ in good:
                thumbs.append(thumbnail(gray))
                folders.append(stem.parent.as_posix() if stem.parent != Path(".") else "")
            predicted_names += [card.class_names[int(k)] for k in predicted]
            own: list[np.ndarray | None] = [None] * len(good)
            film_rows: list[list[dict[str, object]]] = [
                [{"path": name, "error": v.error}] if v.error else [] for (name, *_), v in zip(good, verdicts)
            ]
            for target, rel, booked, value in zip(targets, result.relevance, result.bias_share, result.explained):
                maps = rel.sum(1).numpy()  # grey pixel relevance = sum over its replicated channels
                index = predicted if target is None else torch.full_like(predicted, target)
                for i, (name, stem, _, gray, _) in enumerate(good):
                    if verdicts[i].error:  # a non-finite probability or OOD score: an error row, never a flag
                        continue
                    try:
                        row = _write_outputs(
                            out_dir,
                            name,
                            stem,
                            gray,
                            maps[i],
                            int(index[i]),
                            int(predicted[i]),
                            logits[i],
                            probs[i],
                            card.class_names,
                            options,
                            verdicts[i],
                            quantity,
                        )
                        # relevance_sum + bias_share = explained_value
                        row.update(explained=quantity, explained_value=float(value[i]), bias_share=float(booked[i]))
                        film_rows[i].append(row)
                        if int(index[i]) == int(predicted[i]):
                            own[i] = maps[i]
                    except OSError as exc:  # a name too long for an output file, a full disk: this film fails
                        film_rows[i].append(
                            {"path": name, "error": f"cannot write its outputs ({exc.strerror or exc})"}
                        )
            own_maps += own
            for (name, _, film, _, held), its_rows in zip(good, film_rows):
                rows += its_rows
                if after_film:
                    after_film(name, film, its_rows)
                held.close()  # a fetched copy is gone as soon as its film's outputs and results are done
                if on_file:
                    on_file(name, None)
    shortcut: dict[str, object] = {}
    if thumbs:
        keep = [i for i, m in enumerate(own_maps) if m is not None]
        shortcut = shortcut_audit(
            np.stack(thumbs),
            np.concatenate(feats) if feats else None,
            predicted_names,
            folders,
            [own_maps[i] for i in keep],
            [predicted_names[i] for i in keep],
        )
    csv_path = out_dir / "explain.csv"
    with atomic_open(csv_path, "w", newline="", encoding="utf-8", errors=NAME_ERRORS) as fh:  # names stay byte-exact
        writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
    return ExplainReport(rows, summarize(rows), csv_path, shortcut)


def _flag_title(flag: str) -> str:
    """What a panel title adds for a flagged film (nothing for ``ok``)."""
    from cxrtool.trust.assess import FLAG_OOD, HEADER_FLAG_PREFIX
    from cxrtool.trust.view import VIEW_FLAG_PREFIX

    if flag == FLAG_OOD:
        return " | out of distribution: unlike the training films"
    if flag.startswith(VIEW_FLAG_PREFIX):
        return f" | out of distribution: not a frontal view ({flag[len(VIEW_FLAG_PREFIX) :]})"
    if flag.startswith(HEADER_FLAG_PREFIX):
        return f" | out of distribution: DICOM header says {flag[len(HEADER_FLAG_PREFIX) :]}"
    return ""


def _label(name: str) -> str:
    """A film's short name for a panel title: its file name, or the last segment of an address (a DICOMweb
    instance's SOP Instance UID)."""
    return name.rsplit("/", 1)[-1] if "://" in name else Path(name).name


def _fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


def _write_outputs(
    out_dir: Path,
    name: str,
    stem: Path,
    gray: np.ndarray,
    rmap: np.ndarray,
    index: int,
    predicted: int,
    logits: torch.Tensor,
    probs: torch.Tensor,
    class_names: Sequence[str],
    options: ExplainOptions,
    verdict: Assessment,
    quantity: str,
) -> dict[str, object]:
    """Write one heatmap's ``.npy``, overlay and panel; return its CSV row (with audit shares)."""
    from cxrtool.explain import render

    target = class_names[index]
    base = out_dir / stem.parent / f"{_safe(stem.name)}.{_safe(target)}"
    files = {kind: base.with_name(f"{base.name}.{kind}") for kind in ("heatmap.npy", "overlay.png", "panel.png")}
    scale = render.symmetric_scale(rmap)
    with atomic_path(files["heatmap.npy"]) as tmp:
        np.save(tmp, rmap.astype(np.float32))
    with atomic_path(files["overlay.png"]) as tmp:
        render.overlay(gray, rmap, scale).save(tmp)
    title = (
        f"{_label(name)} | target {target} p={float(probs[index]):.3f} | predicted {class_names[predicted]} "
        f"p={float(probs[predicted]):.3f} | {options.composite}, {quantity} | colour scale +-{scale:.3g}"
    ) + _flag_title(verdict.flag)
    with atomic_path(files["panel.png"]) as tmp:
        explained = f"{target} vs the other classes" if quantity == "log-odds" else target
        render.panel(gray, rmap, scale, title, explained).save(tmp)
    return {
        "path": name,
        "target": target,
        "target_index": index,
        "target_logit": float(logits[index]),
        "target_prob": float(probs[index]),
        "predicted": class_names[predicted],
        "predicted_prob": float(probs[predicted]),
        "ood_score": verdict.ood_score,
        "flag": verdict.flag,
        "relevance_sum": float(rmap.sum()),
        **audit_heatmap(rmap, options.audit),
        "scale": scale,
        "heatmap": str(files["heatmap.npy"]),
        "overlay": str(files["overlay.png"]),
        "panel": str(files["panel.png"]),
        "error": "",
        "probabilities": [float(p) for p in probs],  # every class, calibrated: not a CSV column, for the DICOM SR
    }
