"""``make demo`` and what the tests and the bench share with it (see ``demo/__main__.py``)."""

#: The keywords the demo enrolls, in this order, from ``demo/clips/kws/<keyword>_shot_*.flac``;
#: its keyword stream holds three of each (``python -m demo.build_kws_clips``).
KWS_DEMO_KEYWORDS = ("smart_mirror", "computer")
