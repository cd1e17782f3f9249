"""The Jinja2 template of `affedge report`: one self-contained page, no scripts.

Everything the page shows comes from the results folder and is autoescaped; images arrive as
``data:`` URIs. The Content-Security-Policy forbids every fetch but inline styles and
``data:`` images, so a page that tried to load anything else would fail loudly in a browser
(the browser test watches the console) instead of quietly reaching the network.
"""

from __future__ import annotations

CSS = """
:root { color-scheme: light; --line: #d0d7de; --muted: #57606a; --head: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1f2328; background: #fff; margin: 0; }
header { background: #24292f; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #d0d7de; }
main { padding: 8px 28px 40px; max-width: 1500px; }
h2 { border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 32px; }
h3 { margin: 22px 0 6px; }
h4 { margin: 14px 0 4px; font-size: 13px; color: var(--muted); }
nav ol { columns: 3; padding-left: 20px; }
code, .cmd { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12px; }
.cmd { white-space: pre-wrap; word-break: break-all; background: var(--head);
  padding: 2px 6px; border-radius: 4px; display: inline-block; }
.wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 4px 0 10px; font-size: 12.5px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; vertical-align: top; }
th { background: var(--head); text-align: left; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.na { color: #8c959f; }
td.txt { white-space: nowrap; }
td.long { min-width: 18em; }
tbody tr:nth-child(even) { background: #fbfcfd; }
.meta { color: var(--muted); margin: 2px 0 8px; }
.note { color: var(--muted); font-style: italic; }
.figures { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px;
  background: #fff; }
figure img { display: block; max-width: 100%; height: auto; }
figure.wide img { max-width: 680px; }
figure.small img { max-width: 420px; }
figcaption { font-size: 11.5px; color: var(--muted); margin-top: 4px; }
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
  content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="affedge {{ version }}">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p>{{ files | length }} result file{{ "" if files | length == 1 else "s" }},
{{ image_count }} figure{{ "" if image_count == 1 else "s" }} from <code>{{ root }}</code>;
page generated {{ generated }} by affedge {{ version }}.</p>
</header>
<main>
<nav>
<h2>Contents</h2>
<ol>
{% if quality_figures %}<li><a href="#quality-vs-speed">Quality vs speed</a></li>{% endif %}
{% for f in files %}<li><a href="#{{ f.anchor }}">{{ f.name }}</a></li>
{% endfor %}
{% for g in figure_groups %}<li><a href="#{{ g.anchor }}">{{ g.title }}</a></li>
{% endfor %}
<li><a href="#machines">Machines and commands</a></li>
{% if other_files %}<li><a href="#other-files">Other files</a></li>{% endif %}
</ol>
</nav>

{% macro table(t) -%}
<h4>{{ t.title }}</h4>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}
{% if t.rows %}
<div class="wrap"><table>
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr>{% for cell in row %}<td{% if cell.css %} class="{{ cell.css }}"\
{% endif %}>{{ cell.text }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table></div>
{% endif %}
{%- endmacro %}

{% macro figure(img, size) -%}
<figure class="{{ size }}">
{% if img.data_uri %}<img src="{{ img.data_uri }}" alt="{{ img.name }}">{% endif %}
<figcaption>{{ img.name }}{% if img.note %}: {{ img.note }}{% endif %}</figcaption>
</figure>
{%- endmacro %}

{% if quality_figures %}
<section id="quality-vs-speed">
<h2>Quality vs speed</h2>
<div class="figures">
{% for img in quality_figures %}{{ figure(img, "wide") }}
{% endfor %}
</div>
</section>
{% endif %}

{% for f in files %}
<section id="{{ f.anchor }}">
<h2>{{ f.name }}</h2>
<p class="meta">
{% if f.benchmark %}benchmark <b>{{ f.benchmark }}</b>{% endif %}
{% if f.date %} · {{ f.date }}{% endif %}
{% if f.machine_index %} · machine <a href="#machine-{{ f.machine_index }}">\
#{{ f.machine_index }}</a>{% endif %}
</p>
{% for cmd in f.commands %}<p><span class="cmd">{{ cmd }}</span></p>
{% endfor %}
{% for t in f.tables %}{{ table(t) }}
{% endfor %}
{% if not f.tables %}<p class="note">No table in this file.</p>{% endif %}
</section>
{% endfor %}

{% for g in figure_groups %}
<section id="{{ g.anchor }}">
<h2>{{ g.title }}</h2>
{% for folder, images in g.folders %}
<h3>{{ folder }}</h3>
<div class="figures">
{% for img in images %}{{ figure(img, "small") }}
{% endfor %}
</div>
{% endfor %}
</section>
{% endfor %}

<section id="machines">
<h2>Machines and commands</h2>
{% if machines %}
<div class="wrap"><table>
<thead><tr><th>#</th><th>CPU</th><th>usable cores</th><th>OS</th><th>Python</th>
<th>packages</th><th>files</th></tr></thead>
<tbody>
{% for m in machines %}<tr id="machine-{{ m.index }}"><td class="num">{{ m.index }}</td>
<td>{{ m.cpu }}</td><td class="num">{{ m.cores }}</td><td>{{ m.os }}</td>
<td>{{ m.python }}</td><td>{{ m.packages }}</td><td>{{ m.files | join(", ") }}</td></tr>
{% endfor %}
</tbody>
</table></div>
{% else %}<p class="note">No machine recorded in these results.</p>{% endif %}
<h3>Commands</h3>
{% if commands %}
<div class="wrap"><table>
<thead><tr><th>file</th><th>date</th><th>command</th></tr></thead>
<tbody>
{% for c in commands %}<tr><td>{{ c.file }}</td><td class="txt">{{ c.date }}</td>
<td><span class="cmd">{{ c.command }}</span></td></tr>
{% endfor %}
</tbody>
</table></div>
{% else %}<p class="note">No command recorded in these results.</p>{% endif %}
</section>

{% if other_files %}
<section id="other-files">
<h2>Other files</h2>
<p class="meta">In the folder but not shown above.</p>
<ul>
{% for o in other_files %}<li><code>{{ o.name }}</code>{% if o.note %}: {{ o.note }}{% endif %}\
</li>
{% endfor %}
</ul>
</section>
{% endif %}
</main>
</body>
</html>
"""
