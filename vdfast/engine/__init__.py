"""The engine layer shared by every method: checkpoints (:mod:`vdfast.engine.checkpoint`) and the
training loop every stage runs (:mod:`vdfast.engine.loop`)."""
