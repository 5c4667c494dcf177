"""Classifying movie reviews ("Deep Learning with Python", chapter 4), ported to fastnn by changing
the imports and the ``load_data`` line only (``keras_data`` stands in for ``keras.datasets``:
synthetic reviews, no download).
"""
import numpy as np

from fastnn import keras
from fastnn.keras import layers
from keras_data import imdb

(train_data, train_labels), (test_data, test_labels) = imdb.load_data(
    num_words=10000)


def vectorize_sequences(sequences, dimension=10000):
    results = np.zeros((len(sequences), dimension))
    for i, sequence in enumerate(sequences):
        for j in sequence:
            results[i, j] = 1.
    return results


x_train = vectorize_sequences(train_data)
x_test = vectorize_sequences(test_data)
y_train = np.asarray(train_labels).astype("float32")
y_test = np.asarray(test_labels).astype("float32")

model = keras.Sequential([
    layers.Dense(16, activation="relu"),
    layers.Dense(16, activation="relu"),
    layers.Dense(1, activation="sigmoid")
])

model.compile(optimizer="rmsprop",
              loss="binary_crossentropy",
              metrics=["accuracy"])

x_val = x_train[:len(x_train) // 5]
partial_x_train = x_train[len(x_train) // 5:]
y_val = y_train[:len(y_train) // 5]
partial_y_train = y_train[len(y_train) // 5:]

history = model.fit(partial_x_train,
                    partial_y_train,
                    epochs=20,
                    batch_size=512,
                    validation_data=(x_val, y_val))
history_dict = history.history
print(history_dict.keys())

model = keras.Sequential([
    layers.Dense(16, activation="relu"),
    layers.Dense(16, activation="relu"),
    layers.Dense(1, activation="sigmoid")
])
model.compile(optimizer="rmsprop",
              loss="binary_crossentropy",
              metrics=["accuracy"])
model.fit(x_train, y_train, epochs=4, batch_size=512)
results = model.evaluate(x_test, y_test)
print("results:", results)
print("predictions:", model.predict(x_test)[:3].ravel())
