"""The one markdown-table helper of every report the package prints."""
from typing import Iterable, Optional, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]],
                   align: Optional[str] = None) -> str:
    """A GitHub-flavoured markdown table.

    Args:
        header (list[str]): column titles.
        rows (iterable[list]): cells, converted with ``str`` (None prints as an en dash).
        align (str, optional): one character per column, ``'l'`` or ``'r'``; default: the
            first column left, the others right.

    Returns:
        str: the table, one line per row, no trailing newline.
    """
    align = align or 'l' + 'r' * (len(header) - 1)
    rule = ['---' if a == 'l' else '---:' for a in align]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(rule) + '|']
    for row in rows:
        lines.append('| ' + ' | '.join('–' if v is None else str(v) for v in row) + ' |')
    return '\n'.join(lines)


def fmt(value, spec: str = '.2f') -> Optional[str]:
    """``format(value, spec)``, or None (an en dash in :func:`markdown_table`) for None."""
    return None if value is None else format(value, spec)


def span_label(span: Sequence[int]) -> str:
    """``'a'`` for a one-block span ``(a, a)``, ``'a-b'`` otherwise."""
    a, b = span
    return f'{a}' if a == b else f'{a}-{b}'
