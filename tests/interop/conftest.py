"""The interop tests compare with PyTorch libraries (torch, diffusers, pytorch-fid; the
``.[interop]`` extra). Where the only torchvision wheel is a CUDA build next to a CPU torch (its C
extension cannot load: "operator torchvision::nms does not exist"), torchvision's pure-Python models
are still what pytorch-fid's network is made of: the package is then registered without running
its ``__init__`` (which loads the extension), so ``torchvision.models`` imports and diffusers,
which imports torchvision when it is installed, works. Nothing of the extension is used."""
import importlib.machinery
import importlib.util
import os
import sys
import types


def _torchvision_without_extension():
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        return                      # not installed: the tests that need it skip
    except Exception:  # noqa: BLE001 - RuntimeError from the extension's operator registrations
        pass
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    path = os.path.dirname(spec.origin)
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = [path]
    pkg.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    pkg.__spec__.submodule_search_locations = [path]
    sys.modules["torchvision"] = pkg


try:
    import torch  # noqa: F401
    _torchvision_without_extension()
except ImportError:
    pass
