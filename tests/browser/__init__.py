"""What the real-browser tests share: Chromium, the mail links, the screenshot folder, axe-core.

The npm packages the tests inject into pages (axe-core) are installed here by
``npm ci --prefix tests/browser``; ``node_modules`` is not part of the repository.
"""
