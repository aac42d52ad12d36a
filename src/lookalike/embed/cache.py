"""The converted-model cache: where OpenVINO and int8 models are kept, and what names them.

A converted or quantised model is a function of the model's identity alone (architecture, weights, input size,
preprocessing) and of the library versions, so it is made once and reused by every job, query and Ray worker.
The identity is computed once, when a backend first needs it, and handed down: models → backends → quantise,
never back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailable
from .registry import ModelSpec
from .transforms import Preprocess

log = logging.getLogger(__name__)

CACHE_ENV = "LOOKALIKE_CACHE"  # where converted models are kept (default ~/.cache/lookalike)


@dataclass(frozen=True)
class ModelIdentity:
    """What a converted or quantised model depends on, besides library versions."""

    spec: ModelSpec
    weights_sha256: str  # of the file loaded, or of the tensors themselves for random weights
    preprocess: Preprocess

    @property
    def key(self) -> str:
        """Names the model's cache entries: its name and a digest of architecture and weights."""
        digest = hashlib.sha256(f"{self.spec.arch}|{self.weights_sha256}".encode()).hexdigest()[:16]
        return f"{self.spec.name}-{digest}"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lookalike").expanduser()


def openvino_version() -> str | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.__version__.split("-")[0]


# OpenVINO's converter and NNCF post usage telemetry unless the user opted out, and each event forks the whole
# process (multiprocessing) and waits up to 3 s for the post: 17 events per conversion. Measured here: +0.55 s of wall
# time and +1 CPU-second per ResNet-18 conversion, 2.5× the conversion itself, more in a process holding CLIP.
# lookalike's conversions and quantisations send none (through the modules' own stand-ins, used when
# openvino-telemetry is not installed), unless the user opted in with OpenVINO's `opt_in_out --opt_in`.
_TELEMETRY_MODULES = (
    "openvino.tools.ovc.convert_impl",
    "openvino.tools.ovc.telemetry_utils",
    "openvino.tools.ovc.utils",
)
_telemetry_consent: list[bool] = []  # the user's explicit opt-in, read once


def openvino_telemetry_off() -> None:
    """Point OpenVINO's converter and NNCF (those of their modules loaded so far) at their no-op telemetry, unless the
    user opted in; cheap to call before every conversion."""
    if not _telemetry_consent:
        try:
            from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

            _telemetry_consent.append(OptInChecker().check(enable_opt_in_dialog=False) == ConsentCheckResult.ACCEPTED)
        except Exception:  # not installed (nothing is sent then), or its internals changed: treat as no opt-in
            _telemetry_consent.append(False)
    if _telemetry_consent[0]:
        return
    if any(name in sys.modules for name in _TELEMETRY_MODULES):
        try:
            from openvino.tools.ovc import telemetry_stub
        except ImportError:  # another OpenVINO's layout: leave its telemetry as it is rather than fail a conversion
            return
        for name in _TELEMETRY_MODULES:
            if hasattr(sys.modules.get(name), "tm"):
                sys.modules[name].tm = telemetry_stub
    wrapper = sys.modules.get("nncf.telemetry.wrapper")
    if wrapper is not None and hasattr(wrapper, "NNCFTelemetryStub"):
        stub = wrapper.NNCFTelemetryStub()
        for name in ("nncf.telemetry.wrapper", "nncf.telemetry.decorator", "nncf.telemetry"):
            if hasattr(sys.modules.get(name), "telemetry"):
                sys.modules[name].telemetry = stub


_cache_lock = threading.Lock()


def cached_ir(folder: Path, make: Callable[[], object], failure: str) -> Path:
    """`folder`/model.xml, the OpenVINO model `make()` returns, saved there once and reused after.

    The IR is written to a temporary folder and renamed into place, so a killed run never leaves a
    half-written model that a later run would load; another process that wins the race saved the
    same model. Any error but BackendUnavailable becomes one: `failure` (what could not be done) and why.
    """
    xml = folder / "model.xml"
    if xml.is_file():
        log.debug("openvino: reusing %s", folder)
        return xml
    import openvino as ov

    with _cache_lock:
        if xml.is_file():
            return xml
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".making-", dir=folder.parent))
        try:
            openvino_telemetry_off()
            ov.save_model(make(), tmp / "model.xml", compress_to_fp16=False)
            tmp.rename(folder)
        except OSError:
            if not xml.is_file():  # another process won the race: theirs is as good as ours
                raise
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"{failure} ({type(exc).__name__}: {str(exc)[:200]})") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return xml
