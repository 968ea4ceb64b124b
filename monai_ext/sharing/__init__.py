"""Sharing bundles between labs safely: checkpoint integrity, the allow-list audit, the safe runner, pack/unpack and
signing. A bundle from another lab is hostile input: these tools allow what they can prove safe and refuse the rest.
"""
