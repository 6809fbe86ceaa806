"""Labelled tile datasets for training: discovery, validation, preprocessing and group-level splits.

Three layouts are accepted (:func:`discover`):

* **a folder with one subfolder per class** (``root/<class>/*.jpg``); tiles in a further subfolder
  (``root/<class>/<patient>/*.jpg``) take that subfolder's name as their group (patient/slide);
* **a CSV manifest** (``path,label[,patient|group]``; paths relative to the CSV's folder), given
  directly or as ``labels.csv`` / ``manifest.csv`` inside a folder;
* **a .zip** of class folders (extracted safely with :func:`engine.archive.iter_zip_tiles`).

Problems are reported with clear messages (:class:`~engine.errors.InvalidInputError`): one class
only, an empty class, missing labels, a manifest path outside the dataset root. Unreadable images
do not stop a run: :func:`prepare` skips them and lists them with their count. A group (patient)
appearing in two classes is fine: splits keep each group in one partition.

:func:`prepare` decodes every tile once with :func:`engine.imageio.read_image`, optionally stain
normalises it, resizes it with :func:`engine.imageio.resize_tile` — exactly what inference does —
and stores it as an uncompressed 24-bit BMP in a content-addressed cache, from which ``tf.data``
reads it in parallel during training. BMP, not PNG: decoding a 144 px PNG costs about 0.6 ms of
CPU, a third of what the default augmentation costs per image, so a PNG cache held the file
pipeline to about 0.7 of the in-memory one; a BMP is read in about 0.09 ms (``bench/train.py``). The data hash in the model card is computed from the file contents.

No TensorFlow import here (the dashboard page validates data with this module).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import HistoDashError, InvalidInputError
from engine.imageio import is_tile_name, read_image, resize_tile

MANIFEST_NAMES = ("manifest.csv", "labels.csv")
PATH_COLUMNS = ("path", "filename", "file", "image", "tile")
GROUP_COLUMNS = ("patient", "group", "patient_id", "slide", "case")


@dataclass(frozen=True)
class TileDataset:
    """Labelled tiles found in a dataset (nothing decoded yet).

    ``paths`` are absolute, ``labels`` class names, ``groups`` patient/slide ids (a tile's own name
    when the data have none). ``classes`` are in model output order.
    """

    root: Path
    source: str  # folder | manifest | zip
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    groups: tuple[str, ...]
    classes: tuple[str, ...]
    has_groups: bool
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def y(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {c: counts.get(c, 0) for c in self.classes}

    def summary(self) -> str:
        counts = ", ".join(f"{c} {n}" for c, n in self.class_counts().items())
        groups = f"{len(set(self.groups))} groups" if self.has_groups else "no patient/group column: each tile is its own group"
        return f"{len(self)} tiles in {len(self.classes)} classes ({counts}); {groups}; {self.source} at {self.root}"


@dataclass(frozen=True)
class PreparedData:
    """Tiles decoded, resized to ``px`` and cached as BMP; unreadable ones dropped (``skipped``)."""

    files: tuple[str, ...]  # cached BMPs (uncompressed RGB), aligned with y/groups
    y: np.ndarray
    groups: np.ndarray
    sources: tuple[str, ...]  # the original files
    classes: tuple[str, ...]
    px: int
    data_hash: str
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (file, reason)
    source_px: int | None = None  # median side of the original tiles (a sample of them)


# ----------------------------------------------------------------------------- discovery


def _bad(message: str, hint: str | None = None, path: Path | str | None = None):
    raise InvalidInputError(message, hint, path=str(path) if path is not None else None)


def discover(data: str | Path, *, label_column: str = "label", path_column: str | None = None, group_column: str | None = None,
             classes: tuple[str, ...] = (), extract_to: Path | None = None) -> TileDataset:
    """Find the labelled tiles of ``data`` (see module docstring) and check their structure."""
    root = Path(data).expanduser()
    if not root.exists():
        _bad(f"The dataset '{root}' does not exist.", "Give a folder with one subfolder per class, a CSV manifest or a .zip.", root)
    if not root.is_dir() and not root.is_file():  # e.g. /dev/null: iterating it was a NotADirectoryError traceback
        _bad(f"'{root.name}' is a device or other special file, not a folder, a CSV manifest or a .zip archive.", path=root)
    if root.is_file() and root.suffix.lower() == ".zip":
        if extract_to is None:
            return _discover_zip_names(root, classes)
        return _check(_discover_folder(_extract_zip(root, extract_to), classes), classes, source="zip")
    if root.is_file() and root.suffix.lower() in (".csv", ".tsv"):
        return _check(_discover_manifest(root, label_column, path_column, group_column), classes)
    if root.is_file():
        _bad(f"'{root.name}' is neither a folder, a CSV manifest nor a .zip archive.", path=root)
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return _check(_discover_manifest(root / name, label_column, path_column, group_column), classes)
    return _check(_discover_folder(root, classes), classes)


def _discover_folder(root: Path, classes: tuple[str, ...]) -> TileDataset:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    loose = [p.name for p in root.iterdir() if p.is_file() and is_tile_name(p.name)]
    if not class_dirs:
        hint = f"Found {len(loose)} tiles directly in the folder: put them into one subfolder per class." if loose else None
        _bad(f"'{root}' has no class subfolders (and no manifest.csv / labels.csv).", hint or "Make one subfolder per class, named after the class.", root)
    paths, labels, groups, warnings, empty = [], [], [], [], []
    nested = False
    for cdir in class_dirs:
        found = sorted(p for p in cdir.rglob("*") if p.is_file() and is_tile_name(p.name) and not any(part.startswith(".") for part in p.relative_to(cdir).parts))
        if not found:
            empty.append(cdir.name)
            continue
        for p in found:
            rel = p.relative_to(cdir)
            nested |= len(rel.parts) > 1
            paths.append(str(p))
            labels.append(cdir.name)
            groups.append(rel.parts[0] if len(rel.parts) > 1 else f"{cdir.name}/{rel.as_posix()}")
    if empty:
        if classes and not set(empty) & set(classes):
            warnings.append(f"ignored empty folders: {', '.join(empty)}")
        else:
            _bad(f"Class folder(s) {', '.join(repr(e) for e in empty)} in '{root}' hold no images.",
                 "Add JPEG/PNG/TIFF tiles to every class folder, or remove the empty ones.", root)
    if loose:
        warnings.append(f"{len(loose)} tiles directly in '{root.name}' (not in a class folder) were ignored")
    return TileDataset(root, "folder", tuple(paths), tuple(labels), tuple(groups), (), nested, tuple(warnings))


def _pick(columns, wanted: str | None, candidates: tuple[str, ...], what: str, csv_path: Path, required: bool = True) -> str | None:
    lower = {c.lower(): c for c in columns}
    if wanted:
        if wanted in columns:
            return wanted
        if wanted.lower() in lower:
            return lower[wanted.lower()]
        _bad(f"The manifest '{csv_path.name}' has no column '{wanted}' for the {what}.", f"Its columns: {', '.join(map(str, columns))}.", csv_path)
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        _bad(f"The manifest '{csv_path.name}' has no {what} column ({' / '.join(candidates)}).", f"Its columns: {', '.join(map(str, columns))}.", csv_path)
    return None


def _discover_manifest(csv_path: Path, label_column: str, path_column: str | None, group_column: str | None) -> TileDataset:
    import pandas as pd

    try:
        df = pd.read_csv(csv_path, sep=None if csv_path.suffix.lower() == ".tsv" else ",", engine="python", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, pd.errors.EmptyDataError) as exc:
        _bad(f"The manifest '{csv_path.name}' cannot be read as CSV ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}).", path=csv_path)
    if df.empty:
        _bad(f"The manifest '{csv_path.name}' lists no tiles.", path=csv_path)
    pcol = _pick(df.columns, path_column, PATH_COLUMNS, "tile path", csv_path)
    lcol = _pick(df.columns, label_column, (), "label", csv_path)
    gcol = _pick(df.columns, group_column, GROUP_COLUMNS, "patient/group", csv_path, required=False)
    root = csv_path.parent.resolve()
    missing_label = df.index[df[lcol].str.strip() == ""].tolist()
    if missing_label:
        first = missing_label[0]
        _bad(f"{len(missing_label)} row(s) of '{csv_path.name}' have no label (first: line {first + 2}, '{df.at[first, pcol]}').",
             f"Fill the '{lcol}' column for every tile, or remove those rows.", csv_path)
    missing_path = df.index[df[pcol].str.strip() == ""].tolist()
    if missing_path:
        _bad(f"{len(missing_path)} row(s) of '{csv_path.name}' have no file path (first: line {missing_path[0] + 2}).", path=csv_path)
    paths, outside = [], []
    for raw in df[pcol]:
        p = Path(raw.strip())
        full = (p if p.is_absolute() else root / p).resolve()
        if not full.is_relative_to(root):
            outside.append(raw)
        paths.append(str(full))
    if outside:
        _bad(f"{len(outside)} path(s) in '{csv_path.name}' point outside the dataset folder (first: '{outside[0]}').",
             f"Every tile must lie inside '{root}' (the manifest's folder); copy the tiles there and use relative paths.", csv_path)
    labels = tuple(s.strip() for s in df[lcol])
    if gcol is not None:
        blank = df[gcol].str.strip() == ""
        groups = tuple(g.strip() if not b else f"tile:{p}" for g, b, p in zip(df[gcol], blank, paths))
    else:
        groups = tuple(f"tile:{p}" for p in paths)
    warnings = () if gcol else (f"the manifest has no patient/group column ({' / '.join(GROUP_COLUMNS)}): each tile is its own group, so near-duplicate tiles of one patient may fall into different splits",)
    return TileDataset(root, "manifest", tuple(paths), labels, groups, (), gcol is not None, warnings)


def _discover_zip_names(zip_path: Path, classes: tuple[str, ...]) -> TileDataset:
    """Check a zip's layout without extracting (the page's quick check)."""
    from engine.archive import iter_zip_tiles

    names = [name for name, _ in iter_zip_tiles(zip_path, name=zip_path.name)]
    parts = [n.replace("\\", "/").split("/") for n in names]
    while parts and all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]  # one top folder around the class folders
    if not parts or any(len(p) < 2 for p in parts):
        _bad(f"'{zip_path.name}' must contain one folder per class (class/tile.jpg); found {len(names)} tiles" + (" outside class folders." if parts else "."), path=zip_path)
    paths = tuple(f"{zip_path}!/{'/'.join(p)}" for p in parts)
    labels = tuple(p[0] for p in parts)
    groups = tuple(p[1] if len(p) > 2 else "/".join(p) for p in parts)
    return _check(TileDataset(zip_path, "zip", paths, labels, groups, (), any(len(p) > 2 for p in parts)), classes, source="zip")


def _extract_zip(zip_path: Path, dest: Path) -> Path:
    from engine.archive import iter_zip_tiles

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    for member, raw in iter_zip_tiles(zip_path, name=zip_path.name):
        target = (dest / member).resolve()
        if not target.is_relative_to(base):  # iter_zip_tiles already refuses these; belt and braces
            _bad(f"'{zip_path.name}' contains a path that points outside the archive ('{member}').", path=zip_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    root = dest
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__"))]
        subdirs = [p for p in entries if p.is_dir()]
        if len(subdirs) == 1 and len(entries) == 1 and any(q.is_dir() for q in subdirs[0].iterdir()):
            root = subdirs[0]
        else:
            return root


def _check(ds: TileDataset, classes: tuple[str, ...], *, source: str | None = None) -> TileDataset:
    found = sorted(set(ds.labels))
    if classes:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            _bad(f"The data contain labels {unknown} that are not among the configured classes {list(classes)}.", path=ds.root)
        absent = [c for c in classes if c not in found]
        if absent:
            _bad(f"Class(es) {absent} have no tiles in '{ds.root}'.", "Every configured class needs tiles.", ds.root)
        order = tuple(classes)
    else:
        order = tuple(found)
    if len(order) < 2:
        _bad(f"Only one class ({order[0]!r}) was found in '{ds.root}'; training needs at least two." if order else f"No labelled tiles were found in '{ds.root}'.",
             "Use one subfolder (or one label value) per class.", ds.root)
    return TileDataset(ds.root, source or ds.source, ds.paths, ds.labels, ds.groups, order, ds.has_groups, ds.warnings)


def subsample(ds: TileDataset, max_images: int | None, seed: int) -> TileDataset:
    """A stratified random subset of at most ``max_images`` tiles (every class kept)."""
    if not max_images or len(ds) <= max_images:
        return ds
    rng = np.random.default_rng(seed)
    labels = np.array(ds.labels)
    keep: list[int] = []
    for c in ds.classes:
        idx = np.flatnonzero(labels == c)
        n = max(2, int(round(max_images * len(idx) / len(ds))))
        keep.extend(rng.choice(idx, size=min(n, len(idx)), replace=False).tolist())
    keep.sort()
    pick = lambda seq: tuple(seq[i] for i in keep)  # noqa: E731
    return TileDataset(ds.root, ds.source, pick(ds.paths), pick(ds.labels), pick(ds.groups), ds.classes, ds.has_groups, ds.warnings)


# ----------------------------------------------------------------------------- preprocessing


def default_cache_root() -> Path:
    from engine.config import get_settings

    return get_settings().home / "train-cache"


def prepare(ds: TileDataset, px: int, *, normalization: str = "none", normalizer=None, cache_root: Path | None = None, workers: int = 2,
            progress: Callable[[int, int], None] | None = None, cancelled: Callable[[], bool] | None = None) -> PreparedData:
    """Decode, (normalise), resize and cache every tile; unreadable tiles are skipped and listed.

    The cache is keyed by the file's content hash, ``px`` and the normalisation (``normalizer``: a
    fitted :mod:`engine.stain` normaliser; default for ``normalization="macenko"``: the published
    target), so a second run on the same data only reads the files to hash them.
    """
    from PIL import Image

    from engine.errors import CorruptFileError

    if normalizer is None and normalization == "macenko":
        from engine.stain import get_normalizer

        normalizer = get_normalizer("macenko")
    tag = "none" if normalizer is None else f"{normalizer.method}-{hashlib.sha256(normalizer.cache_key().encode()).hexdigest()[:10]}"
    cache_dir = Path(cache_root or default_cache_root()) / f"{px}px-{tag}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    done = [0]
    total = len(ds)

    def one(i: int):
        if cancelled is not None and cancelled():
            return None
        path = Path(ds.paths[i])
        try:
            raw = path.read_bytes()
        except OSError as exc:
            return ("skip", f"cannot be read ({exc.strerror or exc})")
        digest = hashlib.sha256(raw).hexdigest()
        out = cache_dir / digest[:2] / f"{digest}.bmp"
        if not out.exists():
            try:
                rgb = read_image(raw, name=path.name)
                if normalizer is not None:
                    rgb = normalizer.transform_with_info(rgb).image
                rgb = resize_tile(rgb, px)
            except (HistoDashError, CorruptFileError) as err:
                return ("skip", str(err))
            out.parent.mkdir(exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="BMP")  # uncompressed: read at memory speed (module docstring)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, out)
        return ("ok", str(out), digest)

    def run(i: int):
        r = one(i)
        with lock:
            done[0] += 1
            if progress is not None and (done[0] % 16 == 0 or done[0] == total):
                progress(done[0], total)
        return r

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(run, range(total)))
    if cancelled is not None and cancelled():
        from engine.errors import Cancelled

        raise Cancelled("cancelled while preparing tiles")
    files, keep, skipped, digests = [], [], [], []
    for i, r in enumerate(results):
        if r is None:
            continue
        if r[0] == "ok":
            files.append(r[1])
            keep.append(i)
            digests.append(r[2])
        else:
            skipped.append((ds.paths[i], r[1]))
    if not keep:
        _bad(f"None of the {total} tiles in '{ds.root}' could be read.", "Check that the files are JPEG, PNG or TIFF images.", ds.root)
    y_all = ds.y
    y = y_all[keep]
    present = set(y.tolist())
    lost = [c for i, c in enumerate(ds.classes) if i not in present]
    if lost:
        _bad(f"Every tile of class(es) {lost} was unreadable ({len(skipped)} tiles skipped).", path=ds.root)
    h = hashlib.sha256()
    root = str(ds.root)
    for i, d in sorted(zip(keep, digests), key=lambda t: (os.path.relpath(ds.paths[t[0]], root) if ds.source != "zip" else ds.paths[t[0]])):
        rel = os.path.relpath(ds.paths[i], root)
        h.update(f"{rel}\t{ds.labels[i]}\t{ds.groups[i] if ds.has_groups else ''}\t{d}\n".encode())
    return PreparedData(tuple(files), y, np.array([ds.groups[i] for i in keep], dtype=object), tuple(ds.paths[i] for i in keep),
                        ds.classes, int(px), h.hexdigest(), tuple(skipped), _median_side([ds.paths[i] for i in keep[:: max(1, len(keep) // 50)]]))


def _median_side(paths) -> int | None:
    """Median of max(width, height) of a few tiles (image headers only)."""
    from PIL import Image

    sides = []
    for p in paths:
        try:
            with Image.open(p) as im:
                sides.append(max(im.size))
        except Exception:  # noqa: BLE001 - zip members, unreadable files: no estimate from them
            continue
    return int(np.median(sides)) if sides else None


def describe_skipped(skipped, limit: int = 10) -> str:
    lines = [f"{len(skipped)} unreadable tile(s) skipped:"]
    lines += [f"  {Path(p).name}: {why}" for p, why in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  … and {len(skipped) - limit} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- splits


def _group_counts(y: np.ndarray, groups: np.ndarray, n_classes: int):
    uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    counts = np.zeros((len(uniq), n_classes), dtype=np.int64)
    np.add.at(counts, (inv, y), 1)
    return uniq, inv, counts


def split_holdout(y: np.ndarray, groups: np.ndarray, *, val: float = 0.15, test: float = 0.15, seed: int = 42,
                  classes: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Group-level, class-stratified train/validation/test split: ``{"train": idx, "val": idx, "test": idx}``.

    Groups are taken in a seeded random order (largest first) and each goes to the partition that
    most lacks its classes, so every group lies in exactly one partition and each partition holds
    about its share of every class. Raises when a class cannot appear in every partition.
    """
    y = np.asarray(y)
    n_classes = int(y.max()) + 1 if classes is None else len(classes)
    names = classes or tuple(str(i) for i in range(n_classes))
    uniq, inv, counts = _group_counts(y, groups, n_classes)
    fracs = {"train": 1.0 - val - test, "val": val, "test": test}
    parts = [s for s in ("test", "val", "train") if fracs[s] > 0]
    class_tot = np.maximum(counts.sum(0), 1).astype(float)
    target = {s: fracs[s] * class_tot for s in parts}
    cur = {s: np.zeros(n_classes) for s in parts}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    assign = np.empty(len(uniq), dtype=object)
    for g in order:
        best = max(parts, key=lambda s: float(((target[s] - cur[s]) * counts[g] / class_tot).sum()))
        assign[g] = best
        cur[best] += counts[g]
    split = assign[inv]
    out = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    for s in parts:
        have = set(y[out[s]].tolist())
        missing = [names[c] for c in range(n_classes) if c not in have]
        if missing:
            per_class = {names[c]: int((counts[:, c] > 0).sum()) for c in range(n_classes)}
            raise InvalidInputError(
                f"Too few patients/groups for a {fracs['train']:.0%}/{val:.0%}/{test:.0%} split: the {'validation' if s == 'val' else s} part gets no tile of class(es) {missing} "
                f"(groups per class: {per_class}).", "Add data, lower the validation/test fractions, or use k-fold.")
    return out


def split_kfold(y: np.ndarray, groups: np.ndarray, *, folds: int = 5, seed: int = 42, classes: tuple[str, ...] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group k-fold (scikit-learn's ``StratifiedGroupKFold``): ``[(train_idx, val_idx), …]``."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    n_groups = len(np.unique(np.asarray(groups, dtype=str)))
    if n_groups < folds:
        raise InvalidInputError(f"{folds}-fold cross-validation needs at least {folds} patients/groups; the data have {n_groups}.", "Use fewer folds or a holdout split.")
    names = classes or tuple(str(i) for i in range(int(y.max()) + 1))
    out = []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (tr, va) in enumerate(splitter.split(np.zeros(len(y)), y, np.asarray(groups, dtype=str))):
        missing = [names[c] for c in range(len(names)) if c not in set(y[va].tolist())]
        if missing:
            raise InvalidInputError(f"Fold {k + 1} of {folds} gets no validation tile of class(es) {missing}: too few groups for {folds} folds.", "Use fewer folds.")
        out.append((tr, va))
    return out
