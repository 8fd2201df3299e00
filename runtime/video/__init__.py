"""Upscale a video: decode, the tiled model, encode, in closed segments that a later run resumes.

One video is planned from its packets alone (no decoding): the video stream's frame timestamps, cut
at key frames into segments of about ``segment_frames`` frames. Each segment runs as three threads
joined by bounded queues (memory does not grow with the video's length)::

    decode (seek to the segment, frames -> float RGB)  ->  model (tiled runtime)  ->  encode (-> segment file)

Every output frame keeps its input frame's pts in the input's time base (variable frame rate stays
variable). A finished segment is renamed into the work folder ``.NAME.hrx-work`` beside the output; a
run that is killed or interrupted leaves the finished segments there, and the same command continues
from them. When every segment is there, :func:`hrx.runtime.video.mux.join` writes the output (the
segments' video with every other stream of the input copied) to a temporary name and renames it: only
a complete file ever appears at the output path. One run makes an output at a time: its work folder
carries an exclusive lock (``flock``, :func:`video_lock`), and a second run on the same output fails that
video in one line (:class:`~hrx.errors.OutputBusy`) without touching the folder.

Frames that cannot be decoded (corrupt packets) are counted and reported as lost frames (``strict``:
the video fails); a model error fails the video, never drops a frame.

The modules, one job each (the names below are re-exported here):

* :mod:`~hrx.runtime.video.options`: :class:`VideoOptions`, the encoder families, the progress protocol;
* :mod:`~hrx.runtime.video.planning`: :func:`probe` plans a video (:class:`VideoPlan`, its
  :class:`Segment` s, encoder, sizes, colour tags, :class:`Orientation`);
* :mod:`~hrx.runtime.video.codec`: one segment through the decode, model (:class:`FrameUpscaler`) and
  encode threads (:func:`encode_segment`);
* :mod:`~hrx.runtime.video.segments`: one video from plan to output: the work folder, its lock, the
  finished segments, the join (:func:`upscale_video`, :func:`begin_video`, :func:`finish_video`);
* :mod:`~hrx.runtime.video.color`: frames <-> float RGB with the stream's matrix, range and depth; HDR metadata;
* :mod:`~hrx.runtime.video.mux`: output containers and the final join (the other streams copied);
* :mod:`~hrx.runtime.video.ray`: the segments of a video spread over Ray Data actors (imported on demand).
* :mod:`~hrx.runtime.video.batch`: the videos of an ``hrx upscale`` run: which inputs are videos, their run one
  after the other (imported on demand).
"""
from __future__ import annotations

from hrx.runtime.video.codec import SEGMENT_FORMAT, FrameUpscaler, decode_segment, encode_segment, open_encoder
from hrx.runtime.video.options import (DEFAULT_SEGMENT_FRAMES, FALLBACK_CODEC, SAME_FAMILY, NoVideoProgress,
                                       VideoOptions, VideoProgress)
from hrx.runtime.video.planning import (UPRIGHT, Orientation, Segment, VideoPlan, choose_encoder, display_matrix,
                                        open_input, orientation_of, output_color, plan_segments, probe,
                                        video_stream)
from hrx.runtime.video.segments import (VideoResult, VideoRun, begin_video, finish_video, prepare_work, run_segment,
                                        segment_path, stamps_path, upscale_video, video_lock, work_folder)

__all__ = ["DEFAULT_SEGMENT_FRAMES", "FALLBACK_CODEC", "SAME_FAMILY", "SEGMENT_FORMAT", "UPRIGHT", "FrameUpscaler",
           "NoVideoProgress", "Orientation", "Segment", "VideoOptions", "VideoPlan", "VideoProgress", "VideoResult",
           "VideoRun", "begin_video", "choose_encoder", "decode_segment", "display_matrix", "encode_segment",
           "finish_video", "open_encoder", "open_input", "orientation_of", "output_color", "plan_segments", "probe",
           "prepare_work", "run_segment", "segment_path", "stamps_path", "upscale_video", "video_lock",
           "video_stream", "work_folder"]
