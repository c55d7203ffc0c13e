"""Dataset readers (:mod:`vdfast.data.layouts`) and clip decoding (:mod:`vdfast.data.decode`)."""
