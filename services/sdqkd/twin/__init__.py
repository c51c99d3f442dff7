"""The embedded SD-QKD network twin: emulated QKD links and KMEs speaking ETSI GS QKD 014 and 004.

Standalone (no Django): ``python -m services.sdqkd.twin --topology madqci``.
"""
