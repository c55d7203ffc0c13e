"""The engine layer shared by every method: checkpoints (:mod:`vdfast.engine.checkpoint`)."""
