"""SynthPose: drawn people in known poses, described by rules — data that needs no download.

`scenes` draws a target person among distractors with its keypoints and a rule-based description
(`describe`, the describer that also turns MPII keypoints into text), for the demo, the tests and
the offline benchmark `bench/synthpose.py`.
"""
