"""The contract both planes share: plain Python, no Django, no other ``apps.*`` import.

Settings values come in as arguments; nothing here reads ``django.conf``.
"""
