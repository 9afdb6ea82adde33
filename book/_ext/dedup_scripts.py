"""Drop repeated inline ``<script>`` bodies from every HTML page.

sphinx-thebe adds its inline configuration (``const THEBE_JS_URL = ...``) once per registration, and under Jupyter
Book 1 with Sphinx 7 it reaches the page twice; the second copy is a JavaScript error ("Identifier 'THEBE_JS_URL' has
already been declared") on every page.  Only exact repeats (same file or inline body, same attributes) are removed."""


def _dedup(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        key = (str(getattr(js, "filename", js) or ""),        # an inline script comes as filename None or ""
               tuple(sorted(getattr(js, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _dedup, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
