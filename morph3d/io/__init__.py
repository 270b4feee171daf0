"""Files in and out: media (PyAV), atomic writes, the outputs guard, size limits, cache paths,
mesh/glTF export, native stderr capture."""
