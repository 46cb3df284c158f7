"""The paper's comparison (Table 3) on MovieLens, an experiment built on the product's public API:
import -> pretrain -> the grid as orchestrated fine-tuning jobs -> tables and a plot (`python cli.py reproduce`).

grid.py: methods, tasks, seeds and the documented settings; pipeline.py: the run; report.py: the tables
and the plot. Results and how they were made: docs/RESULTS.md.
"""
