"""Datasets by name: BEIR's public datasets, fetched once into a cache and checked.

``maxsim download scifact`` fetches ``scifact.zip`` from BEIR's public mirror into the cache
(``$MAXSIM_HOME/datasets``, else ``$XDG_CACHE_HOME/maxsim/datasets``, else
``~/.cache/maxsim/datasets``), checks it against the md5 BEIR publishes, and unzips it; then
``prepare``, ``train --dev-data`` and ``eval --data`` take the name where they take a folder.
``--from PATH_OR_ZIP`` imports a local copy (a BEIR folder, or its zip) instead, for machines
without network. A download that fails part-way, or whose checksum differs, leaves nothing in
the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from maxsim.errors import MaxsimError
from maxsim.files import atomic_directory

logger = logging.getLogger(__name__)

#: where BEIR publishes its datasets, one zip each
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
#: each public BEIR dataset's zip, and the md5 BEIR's README publishes for it
BEIR_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4", "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d", "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114", "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99", "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78", "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c", "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03", "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}
#: seconds a download waits for the server before it gives up
TIMEOUT_S = 30


class DatasetError(MaxsimError, ValueError):
    """A dataset that cannot be had as asked: unknown, unreachable, damaged."""


def cache_root() -> Path:
    """Where datasets are kept: ``$MAXSIM_HOME/datasets``, else the XDG cache's ``maxsim/datasets``."""
    home = os.environ.get("MAXSIM_HOME")
    if home:
        return Path(home) / "datasets"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maxsim" / "datasets"


def is_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds a BEIR dataset (a ``corpus.jsonl`` and a ``queries.jsonl``)."""
    return (folder / "corpus.jsonl").is_file() and (folder / "queries.jsonl").is_file()


def resolve(value: str | Path, fetch: bool = True) -> Path:
    """``value`` as a folder: a path that exists is itself; a dataset's name is its folder in the
    cache, downloaded first if it is not there (``fetch``)."""
    path = Path(value)
    if path.exists() or str(value) not in BEIR_MD5:
        return path
    folder = cache_root() / str(value)
    if is_dataset(folder):
        return folder
    if not fetch:
        raise DatasetError(f"{value} is not downloaded yet: run `maxsim download {value}`")
    return download(str(value))


def download(name: str, source: str | Path | None = None) -> Path:
    """The dataset ``name`` in the cache (fetched from BEIR's mirror, or imported from ``source``,
    a BEIR folder or its zip); returns its folder. One already there is kept as it is."""
    folder = cache_root() / name
    if is_dataset(folder) and source is None:
        return folder
    if source is not None:
        source = Path(source)
        if source.is_dir():
            if not is_dataset(source):
                raise DatasetError(f"{source} holds no corpus.jsonl and queries.jsonl: give a BEIR dataset's folder "
                                   "or zip")
            with atomic_directory(folder) as tmp:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
            return folder
        if not source.is_file():
            raise DatasetError(f"--from {source}: no such file or folder")
        _check_md5(name, source, str(source))
        return _unzip(source, folder)
    if name not in BEIR_MD5:
        raise DatasetError(f"maxsim knows no dataset called {name!r}: it fetches BEIR's public ones "
                           f"({', '.join(sorted(BEIR_MD5))}), or imports any BEIR folder with --from PATH")
    url = BEIR_URL.format(name=name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".tmp-{name}-download-") as work:
        archive = Path(work) / f"{name}.zip"
        _fetch(url, archive, name)
        _check_md5(name, archive, url)
        return _unzip(archive, folder)


def _fetch(url: str, archive: Path, name: str) -> None:
    """``url`` into ``archive``, in blocks; a connection that fails or ends early is an error."""
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, archive.open("wb") as out:
            expected = int(response.headers.get("Content-Length") or -1)
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise DatasetError(f"cannot download {url} ({reason}): check the network, or import a copy made elsewhere "
                           f"with `maxsim download {name} --from PATH_OR_ZIP`") from None
    got = archive.stat().st_size
    if expected >= 0 and got != expected:
        raise DatasetError(f"the download of {url} stopped after {got} of {expected} bytes: run `maxsim download "
                           f"{name}` again")


def _check_md5(name: str, archive: Path, where: str) -> None:
    """Refuse a zip whose md5 is not the one BEIR publishes (a name BEIR does not have: unchecked)."""
    wanted = BEIR_MD5.get(name)
    if wanted is None:
        return
    digest = hashlib.md5(usedforsecurity=False)
    with archive.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != wanted:
        raise DatasetError(f"{where} is not BEIR's {name}.zip (md5 {digest.hexdigest()}, BEIR publishes {wanted}): "
                           "it is damaged or another file; download it again")


def _unzip(archive: Path, folder: Path) -> Path:
    """The zip's dataset (at its top, or in its one top folder, as BEIR's zips hold it) as ``folder``."""
    try:
        with zipfile.ZipFile(archive) as zipped, atomic_directory(folder) as tmp:
            for member in zipped.namelist():
                target = (tmp / member).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise DatasetError(f"{archive} holds {member!r}, which would be written outside the dataset's "
                                       "folder: not a BEIR zip")
            zipped.extractall(tmp)
            inner = next((p for p in [tmp, *sorted(tmp.iterdir())] if p.is_dir() and is_dataset(p)), None)
            if inner is None:
                raise DatasetError(f"{archive} holds no corpus.jsonl and queries.jsonl: not a BEIR dataset")
            if inner != tmp:
                for child in list(inner.iterdir()):
                    child.rename(tmp / child.name)
                shutil.rmtree(inner)
    except zipfile.BadZipFile as err:
        raise DatasetError(f"{archive} is not a readable zip ({err})") from None
    logger.info("dataset in %s", folder)
    return folder
