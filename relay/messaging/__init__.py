"""Secure professional messaging: threads, participants, messages, read and delivery state.

``model`` holds the values, ``core`` the pure rules (validation, relations, transitions,
delivery planning), ``content`` the encrypted-blob formats, ``store`` the SQL adapter and
``service`` the orchestration shared by the HTTP API, the guest view and the SMTP gateway.
"""
