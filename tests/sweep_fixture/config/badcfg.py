mode = "badcfg"
learning_rate = "fast"
