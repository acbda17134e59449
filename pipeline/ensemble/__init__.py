"""Blending prediction files: members, blend arithmetic, weight search, the blend result and its outputs
(submission CSV, HTML report, record)."""
