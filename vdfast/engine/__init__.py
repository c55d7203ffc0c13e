"""The engine layer shared by every method: checkpoints (:mod:`vdfast.engine.checkpoint`), the
training loop every stage runs (:mod:`vdfast.engine.loop`) and the resumable work list of the
stages that write one file per item (:mod:`vdfast.engine.worklist`)."""
