"""The rasterization pipeline, one module per stage (see DESIGN §1)."""
