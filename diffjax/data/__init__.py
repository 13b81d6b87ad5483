"""diffjax.data: datasets that need no download, offline loaders, and the grain input pipeline.

Every loader yields float32 images in [-1, 1] (NHWC) and int32 labels; ``registry.get_source``
builds a random-access source from a config and ``pipeline.make_iterator`` batches it.
"""
