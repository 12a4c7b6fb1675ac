"""Model variants that trade accuracy for cost (MCDNN): the ladder squishy trains, and its repository entry.

The choice of variant is the scheduler's (``squishy.scheduler.variants``); this package makes variants.
"""
