"""The classroom beside cdlib: five exercises, their instant checks and their grader.

>>> from cdlib_classroom import checks          # in an exercise notebook
>>> checks.check_cd_loss(my_cd_loss)

Each exercise is one record (:class:`cdlib_classroom.record.Exercise`), kept in
one registry (:mod:`cdlib_classroom.exercises`) and read by both users: the
instant checks students call from the notebooks (:mod:`cdlib_classroom.checks`)
and ``cdlib grade`` (:mod:`cdlib_classroom.grading`), which grades a folder of
submitted notebooks on the record's hidden cases. The record of an exercise and
everything in it — the check, its cases, its catalogues of named mistakes, the
hidden cases and the questions they are scored by — live in one module per
exercise (:mod:`.cd_loss`, :mod:`.gkd_loss`, :mod:`.edt_schedule`,
:mod:`.kd_loss`, :mod:`.connector`). What a check and the grader both say about
a returned value is in :mod:`.outcome`; the right answers are cdlib's own
(:mod:`.references`).

This package imports cdlib; cdlib never imports it. ``cdlib grade`` reaches it
through the entry-point group ``cdlib.commands`` (pyproject.toml).
"""
