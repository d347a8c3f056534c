"""Drift and quality detection, pure: reference and current frames in, a result out.

Evidently lives here. This package never imports ``daemon``: the daemon reads windows from the
store and hands them over as plain data, so monitors can be tested and reused on their own.
"""
