"""`usvlm serve`: the engine process. One warm `Segmenter` (model, image features, prompt
embeddings) answers segment / refine / classify requests over HTTP, so that the Slicer module never
imports torch: it talks to this process with the standard library (USVLMSegmentLib.engine_client).

Modules: `wire` (the binary framing, both directions), `errors` (one-line JSON errors with HTTP
codes), `auth` (tokens, bind rules, the request guard), `requests` (typed requests read from
frame headers), `jobs` (the worker thread, progress and cancel), `engine_state` (the Segmenter,
stored images and results), `app` (the routes). The protocol is described in docs/engine.md.
"""

PROTOCOL_VERSION = 1
