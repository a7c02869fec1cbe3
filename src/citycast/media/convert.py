"""Sample format, layout and rate conversion of PyAV frames on one thread.

`av.AudioResampler` does the same through an FFmpeg filter graph, but leaves the graph's thread count automatic:
every resampler starts one worker thread per core. The telephone keeps two per call (in and out); a hub that had
taken 400 G.711 calls held 346 idle threads, because an ended call's objects wait for the garbage collector. A
20 ms audio frame is far too little work to share, so here the graph runs on the caller's thread. Same filters
as PyAV's (abuffer → aformat → abuffersink; FFmpeg inserts libswresample). PyAV's own encoder path still makes
such a resampler for codecs with a fixed frame size (Opus, G.722): two threads per such call remain.
"""

from __future__ import annotations

from errno import EAGAIN

import av
import av.error
from av.filter import Graph


class AudioConverter:
    """Frames in, frames of `format`/`layout`/`rate` out. The input's own format, layout and rate are taken from
    the first frame; later frames must match it. `convert(None)` flushes what the filters still hold."""

    def __init__(self, *, format: str = "flt", layout: str = "mono", rate: int) -> None:
        self.format = format
        self.layout = layout
        self.rate = rate
        self._graph: Graph | None = None
        self._source: tuple[str, str, int] | None = None

    def convert(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        if frame is not None:
            source = (frame.format.name, frame.layout.name, frame.sample_rate)
            if self._graph is None:
                self._graph = self._build(frame)
                self._source = source
            elif source != self._source:
                raise ValueError(f"frame is {source}, this converter was set up for {self._source}")
        elif self._graph is None:
            return []
        self._graph.push(frame)
        out: list[av.AudioFrame] = []
        while True:
            try:
                pulled = self._graph.pull()
            except EOFError:
                break
            except av.error.FFmpegError as e:
                if e.errno != EAGAIN:
                    raise
                break
            assert isinstance(pulled, av.AudioFrame)
            out.append(pulled)
        return out

    def _build(self, first: av.AudioFrame) -> Graph:
        graph = Graph()
        graph.threads = 1  # before any filter is added: the whole point of this class
        args = {"time_base": str(first.time_base)} if first.time_base is not None else {}
        source = graph.add(
            "abuffer",
            sample_rate=str(first.sample_rate),
            sample_fmt=first.format.name,
            channel_layout=first.layout.name,
            **args,
        )
        shape = graph.add("aformat", sample_rates=str(self.rate), sample_fmts=self.format, channel_layouts=self.layout)
        sink = graph.add("abuffersink")
        source.link_to(shape)
        shape.link_to(sink)
        graph.configure()
        return graph
