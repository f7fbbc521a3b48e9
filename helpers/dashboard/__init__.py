"""sweep-watch's live terminal view: the data model (model.py), the rich screen (live.py), keys (keys.py)."""
