"""One screen per file: dashboard, chat, export, modals (and the wizard screens)."""
