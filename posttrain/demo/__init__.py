"""`posttrain demo`: the whole pipeline offline on a real pretrained model, with measured gains per stage.

model.py fetches and converts the model once; data.py writes checkable tasks; evaluate.py measures;
run.py drives it all.
"""
