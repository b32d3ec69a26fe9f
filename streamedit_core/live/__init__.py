"""Live sessions: a camera in, an edited stream out, over WebRTC (docs/live.md).

scheduler  the latency policy: FrameScheduler (camera -> editor), OutputPacer (editor -> viewer)
frames     camera frames of any size -> the session's square frames
session    LiveSession: one StreamEditor in a worker thread, commands, timings and stats
rtc        aiortc: the edited and file tracks, PeerSession (one connection, its clean-up)
server     SessionManager (cap, what sessions run, HTTP routes), make_app; static/ holds the page
cli        python -m streamedit_core live

Importing this package imports none of them (aiortc and aiohttp load with `rtc`/`server`).
"""
