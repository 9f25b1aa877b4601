"""The sampler's stages, one concern a module; ladle.engine.sampler puts them together in order."""
