mode = "fail"
steps = 3
