"""No guidance: the denoiser unchanged (registered as ``none``; what an unconditional run uses)."""
from diffjax.guidance.registry import Method, register

register(Method(name="none", make=lambda D, ctx: D, fields=(), needs_classes=False,
                identity=lambda f: True, help="no guidance: the model as trained"))
