"""The rasterization pipeline, one module per stage (see DESIGN §1), composed by
:class:`Renderer`; every stage is a set of compile-once array operations (``arrays``)."""

from .lights import Lights
from .pipeline import Renderer, RenderResult, RenderSettings, render
from .shading import Material
from .texture import Texture

__all__ = ["Lights", "Material", "RenderResult", "RenderSettings", "Renderer", "Texture", "render"]
