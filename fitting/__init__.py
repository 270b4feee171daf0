"""Pixels -> parameters: face detection, landmarks, identity embeddings, tracking, smoothing
and (later) the model-fitting solvers.

Modules: `faces` (detectors and landmark backends), `landmark_maps` (ibug68 from the
mediapipe mesh), `embedding` (dlib's 128-D identity descriptor), `track` (identities over
time), `smooth` (optical-flow refinement and zero-lag smoothing of landmark trajectories).
"""
